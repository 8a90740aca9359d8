//! What the tc programs return, as the kernel reads it. The programs and
//! the packet tests that check them use these, so neither redeclares them.

/// "Not mine, carry on": `TCX_NEXT` on tcx, `TC_ACT_UNSPEC` on cls_bpf.
/// Either way the next program on the hook still sees the packet, where
/// `TC_ACT_OK` would end the chain and hide it from them.
pub const TC_NEXT: i32 = -1;
/// `TC_ACT_SHOT`: dropped.
pub const TC_SHOT: i32 = 2;
/// `TC_ACT_REDIRECT`: sent out of another device (`bpf_redirect_neigh`).
pub const TC_REDIRECT: i32 = 7;
