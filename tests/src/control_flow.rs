//! The control-flow check the 6.1 verifier makes before it simulates
//! anything (`check_cfg` in `kernel/bpf/verifier.c`), replayed on a
//! function's instructions so a refused shape shows on any kernel, not
//! only in the 6.1 VM.
//!
//! `check_cfg` walks the instructions depth first, fall-through before
//! branch. Reaching an instruction that is still on the walk's stack is a
//! back edge: a loop. Since 5.3 a privileged program may have loops, but
//! 6.1 accepts a back edge only along a jump; along a plain fall-through
//! (after an ordinary instruction or a call) it refuses the program with
//! "back-edge from insn X to X+1". LLVM makes exactly that when it rotates
//! a loop so that the loop is entered in its middle and closed by falling
//! into its top. Later kernels accept it, which is how it slipped through.

/// `BPF_JMP` and `BPF_JMP32`, the classes whose instructions may branch.
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const OP_JA: u8 = 0x00;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;

/// One instruction as the check sees it: its opcode and jump offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub off: i16,
}

impl Insn {
    /// The edges out of the instruction at `at`, in the order `check_cfg`
    /// follows them, each with whether a back edge along it is allowed.
    fn edges(self, at: usize) -> Vec<(usize, bool)> {
        let class = self.code & 0x07;
        let next = at + 1;
        if class != CLASS_JMP && class != CLASS_JMP32 {
            return vec![(next, false)];
        }
        let target = usize::try_from(i64::try_from(next).unwrap_or(i64::MAX) + i64::from(self.off))
            .unwrap_or(usize::MAX);
        match self.code & 0xf0 {
            OP_EXIT => Vec::new(),
            OP_CALL => vec![(next, false)],
            OP_JA if class == CLASS_JMP => vec![(target, true)],
            _ => vec![(next, true), (target, true)],
        }
    }
}

/// Every edge `(from, to)` along which 6.1's `check_cfg` finds a back edge
/// it refuses, walking from the first instruction.
pub fn refused_back_edges(insns: &[Insn]) -> Vec<(usize, usize)> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks = vec![Mark::New; insns.len()];
    let mut refused = Vec::new();
    if insns.is_empty() {
        return refused;
    }
    let mut stack: Vec<(usize, std::vec::IntoIter<(usize, bool)>)> =
        vec![(0, insns[0].edges(0).into_iter())];
    marks[0] = Mark::OnStack;
    while let Some((at, edges)) = stack.last_mut() {
        let from = *at;
        let mut descended = None;
        for (to, loop_ok) in edges.by_ref() {
            match marks.get(to) {
                Some(Mark::New) => {
                    descended = Some(to);
                    break;
                }
                Some(Mark::OnStack) if !loop_ok => refused.push((from, to)),
                _ => {}
            }
        }
        if let Some(to) = descended {
            marks[to] = Mark::OnStack;
            stack.push((to, insns[to].edges(to).into_iter()));
        } else {
            marks[from] = Mark::Done;
            stack.pop();
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALU: Insn = Insn { code: 0x07, off: 0 };
    const CALL: Insn = Insn { code: 0x85, off: 0 };
    const EXIT: Insn = Insn { code: 0x95, off: 0 };

    fn goto(off: i16) -> Insn {
        Insn { code: 0x05, off }
    }

    fn if_eq(off: i16) -> Insn {
        Insn { code: 0x15, off }
    }

    #[test]
    fn a_loop_closed_by_a_jump_passes() {
        // 0: alu; 1: call; 2: if .. goto 1 (back along a jump); 3: exit
        let insns = [ALU, CALL, if_eq(-2), EXIT];
        assert!(refused_back_edges(&insns).is_empty());
    }

    #[test]
    fn a_loop_entered_in_its_middle_and_closed_by_a_fall_through_is_refused() {
        // The shape LLVM gave the NAT port probes: enter at 3 (the call),
        // close by jumping to 2, which falls through into 3.
        let insns = [ALU, goto(1), ALU, CALL, if_eq(1), goto(-4), EXIT];
        assert_eq!(refused_back_edges(&insns), [(2, 3)]);
    }
}
