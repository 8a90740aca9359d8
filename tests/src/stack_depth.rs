//! The stack limit the 6.1 verifier puts on a call chain
//! (`check_max_stack_depth` in `kernel/bpf/verifier.c`), replayed on a
//! linked program so a chain too deep shows on any kernel, not only in the
//! 6.1 VM. Each function's frame counts rounded up to 32 bytes, an empty one
//! as 32 too, and the frames along every chain of BPF-to-BPF calls add up
//! to 512 bytes at most. Later kernels round frames to 16 bytes only, which
//! is how a chain at 544 on 6.1 passes on them.
//!
//! A frame's depth is the deepest stack byte it names: loads and stores off
//! `r10`, and pointers made from it (`rX = r10; rX += -N`) that helpers or
//! callees are handed. The verifier counts the bytes actually touched; the
//! two agree for the code LLVM emits.

/// The verifier's limit on a chain's frames (`MAX_BPF_STACK`).
pub const MAX_STACK: u32 = 512;
/// 6.1 rounds each frame to this.
const FRAME_ROUNDING: u32 = 32;
const FRAME_POINTER: u8 = 10;

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_ALU64: u8 = 0x07;
const CALL: u8 = 0x85;
/// `src_reg` of a call to another BPF function (not a helper).
const PSEUDO_CALL: u8 = 1;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;

/// One instruction, as much of it as the count needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

/// One frame of a call chain: the function's first instruction and its
/// depth as the verifier rounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub start: usize,
    pub bytes: u32,
}

/// The chain of calls from the program's entry whose frames add up to the
/// most, entry first.
pub fn deepest_chain(insns: &[Insn]) -> Vec<Frame> {
    let mut starts: Vec<usize> = std::iter::once(0)
        .chain(
            insns
                .iter()
                .enumerate()
                .filter_map(|(at, insn)| call_target(at, *insn)),
        )
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .copied()
        .chain([insns.len()])
        .collect();
    let functions: Vec<(usize, usize)> = starts.iter().copied().zip(ends).collect();
    let mut memo = vec![None; functions.len()];
    deepest_from(0, insns, &functions, &mut memo, &mut Vec::new())
}

/// The chain's total: what 6.1 compares with [`MAX_STACK`].
pub fn total(chain: &[Frame]) -> u32 {
    chain.iter().map(|frame| frame.bytes).sum()
}

fn call_target(at: usize, insn: Insn) -> Option<usize> {
    (insn.code == CALL && insn.src == PSEUDO_CALL)
        .then(|| usize::try_from(i64::try_from(at + 1).ok()? + i64::from(insn.imm)).ok())
        .flatten()
}

/// The deepest chain starting at function `index` (memoised; a recursive
/// call, which the verifier refuses anyway, is not followed).
fn deepest_from(
    index: usize,
    insns: &[Insn],
    functions: &[(usize, usize)],
    memo: &mut Vec<Option<Vec<Frame>>>,
    on_path: &mut Vec<usize>,
) -> Vec<Frame> {
    if let Some(chain) = &memo[index] {
        return chain.clone();
    }
    let (start, end) = functions[index];
    let body = &insns[start..end];
    on_path.push(index);
    let mut below = Vec::new();
    for (offset, insn) in body.iter().enumerate() {
        let Some(target) = call_target(start + offset, *insn) else {
            continue;
        };
        let Some(callee) = functions.iter().position(|&(s, _)| s == target) else {
            continue;
        };
        if on_path.contains(&callee) {
            continue;
        }
        let chain = deepest_from(callee, insns, functions, memo, on_path);
        if total(&chain) > total(&below) {
            below = chain;
        }
    }
    on_path.pop();
    let depth = frame_depth(body).max(1);
    let mut chain = vec![Frame {
        start,
        bytes: depth.div_ceil(FRAME_ROUNDING) * FRAME_ROUNDING,
    }];
    chain.extend(below);
    memo[index] = Some(chain.clone());
    chain
}

/// The deepest stack byte `body` names, in bytes below the frame pointer.
fn frame_depth(body: &[Insn]) -> u32 {
    // Registers holding r10 plus an offset, as the function goes.
    let mut pointers = [None::<i64>; 11];
    let mut depth: i64 = 0;
    for insn in body {
        let class = insn.code & 0x07;
        let base = match class {
            CLASS_LDX => Some(insn.src),
            CLASS_ST | CLASS_STX => Some(insn.dst),
            _ => None,
        };
        if let Some(base) = base {
            let at = if base == FRAME_POINTER {
                Some(0)
            } else {
                pointers.get(usize::from(base)).copied().flatten()
            };
            if let Some(at) = at {
                depth = depth.max(-(at + i64::from(insn.off)));
            }
        }
        let dst = usize::from(insn.dst);
        match (class, insn.code) {
            (CLASS_ALU64, MOV64_REG) => {
                pointers[dst] = if insn.src == FRAME_POINTER {
                    Some(0)
                } else {
                    pointers.get(usize::from(insn.src)).copied().flatten()
                };
            }
            (CLASS_ALU64, ADD64_IMM) => {
                if let Some(at) = pointers[dst].as_mut() {
                    *at += i64::from(insn.imm);
                    depth = depth.max(-*at);
                }
            }
            // A call clobbers r0-r5.
            (_, CALL) => pointers[..6].fill(None),
            // Anything else that writes its destination register.
            (CLASS_LD | CLASS_LDX | CLASS_ALU | CLASS_ALU64, _) => {
                if let Some(slot) = pointers.get_mut(dst) {
                    *slot = None;
                }
            }
            _ => {}
        }
    }
    u32::try_from(depth).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: Insn = Insn {
        code: 0x95,
        dst: 0,
        src: 0,
        off: 0,
        imm: 0,
    };

    fn store_at(off: i16) -> Insn {
        // *(u64 *)(r10 + off) = r1
        Insn {
            code: 0x7b,
            dst: FRAME_POINTER,
            src: 1,
            off,
            imm: 0,
        }
    }

    fn call(imm: i32) -> Insn {
        Insn {
            code: CALL,
            dst: 0,
            src: PSEUDO_CALL,
            off: 0,
            imm,
        }
    }

    fn pointer(reg: u8, offset: i32) -> [Insn; 2] {
        [
            Insn {
                code: MOV64_REG,
                dst: reg,
                src: FRAME_POINTER,
                off: 0,
                imm: 0,
            },
            Insn {
                code: ADD64_IMM,
                dst: reg,
                src: 0,
                off: 0,
                imm: offset,
            },
        ]
    }

    #[test]
    fn frames_round_to_32_and_add_up_along_the_deepest_chain() {
        // main (144 bytes) calls f at 4 and g at 8; f (40 bytes, through a
        // pointer handed on) calls h at 11, which touches nothing; g: 8.
        let [mov, add] = pointer(2, -40);
        let insns = [
            store_at(-144),
            call(2),
            call(5),
            EXIT,
            mov,
            add,
            call(4),
            EXIT,
            store_at(-8),
            EXIT,
            EXIT,
            EXIT,
        ];
        let chain = deepest_chain(&insns);
        assert_eq!(
            chain,
            [
                Frame {
                    start: 0,
                    bytes: 160
                },
                Frame {
                    start: 4,
                    bytes: 64
                },
                Frame {
                    start: 11,
                    bytes: 32
                },
            ]
        );
        assert_eq!(total(&chain), 256);
    }
}
