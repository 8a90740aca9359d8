//! What the socket hooks remember per socket (`switchyard_abi::SockState`,
//! in socket-local storage): which backend each frontend it talked to went
//! to. The state is created on the first translation and freed by the
//! kernel with its socket.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_socket_cookie,
    programs::{SockAddrContext, SockContext},
};
use switchyard_abi::{Addr, Backend, PROTO_UDP, SOCK_PEERS, ServiceKey, SockState};

use crate::{
    maps::{SOCK_STATE, UDP_PEERS},
    select::still_chosen,
    sock::Call,
};

/// What `select` chose: the backend, its id and the slot that named it.
#[derive(Clone, Copy)]
pub struct Selected {
    pub backend: Backend,
    pub id: u32,
    pub slot: u16,
}

/// Records that this socket's traffic to `frontend` goes to `backend`: in
/// the frontend's entry if it has one, else an unused one, else the next in
/// turn. Without memory for the state the translation still happens; only
/// replies then show the backend's address.
pub fn remember(ctx: &SockAddrContext, call: Call, frontend: &ServiceKey, chosen: &Selected) {
    let Selected {
        backend,
        id: backend_id,
        slot,
    } = *chosen;
    let Some(state) = SOCK_STATE.get(ctx, true) else {
        return;
    };
    // SAFETY: the pointer is this socket's value, valid for this run; the
    // kernel serialises the socket calls of one socket.
    let state = unsafe { &mut *state };
    let index = entry_for(state, &frontend.addr, frontend.port);
    let peer = &mut state.peers[index];
    peer.backend = backend.addr;
    peer.backend_port = backend.port;
    peer.frontend = frontend.addr;
    peer.frontend_port = frontend.port;
    peer.backend_id = backend_id;
    peer.slot = slot;
    if call == Call::Connect && frontend.proto == PROTO_UDP {
        // SAFETY: the context pointer is valid for this run.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _left_out_when_full = UDP_PEERS.insert(&cookie, peer, 0);
    }
}

/// A socket closes: its entry in the connected-UDP table goes with it.
pub fn forget(ctx: &SockContext) {
    // SAFETY: the context pointer is valid for this run.
    let (protocol, cookie) = unsafe { ((*ctx.sock).protocol, bpf_get_socket_cookie(ctx.as_ptr())) };
    if protocol == u32::from(PROTO_UDP) {
        let _absent_is_fine = UDP_PEERS.remove(&cookie);
    }
}

fn entry_for(state: &mut SockState, frontend: &Addr, port: u16) -> usize {
    let mut unused = None;
    for (index, peer) in state.peers.iter().enumerate() {
        if peer.backend_id != 0 && peer.frontend == *frontend && peer.frontend_port == port {
            return index;
        }
        if peer.backend_id == 0 && unused.is_none() {
            unused = Some(index);
        }
    }
    unused.unwrap_or_else(|| {
        let index = state.next as usize % SOCK_PEERS;
        state.next = state.next.wrapping_add(1);
        index
    })
}

/// The backend this socket's earlier datagrams to `frontend` went to, if
/// the frontend still has it.
pub fn sticky(ctx: &SockAddrContext, frontend: &ServiceKey) -> Option<Backend> {
    let state = SOCK_STATE.get(ctx, false)?;
    // SAFETY: as in `remember`; read only.
    let state = unsafe { &*state };
    let peer = state.peers.iter().find(|peer| {
        peer.backend_id != 0
            && peer.frontend == frontend.addr
            && peer.frontend_port == frontend.port
    })?;
    still_chosen(frontend, peer.slot, peer.backend_id)
        .filter(|backend| backend.addr == peer.backend && backend.port == peer.backend_port)
}

/// The frontend (address, port) whose traffic this socket sent to
/// `backend:port`, for a reply or getpeername() to show.
pub fn frontend_of(ctx: &SockAddrContext, backend: &Addr, port: u16) -> Option<(Addr, u16)> {
    let state = SOCK_STATE.get(ctx, false)?;
    // SAFETY: as in `remember`; read only.
    let state = unsafe { &*state };
    state
        .peer_for_backend(backend, port)
        .map(|peer| (peer.frontend, peer.frontend_port))
}
