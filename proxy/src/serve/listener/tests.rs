use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

fn ok(_: &Request<Incoming>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

#[test]
fn backoff_doubles_to_a_second_and_is_said_once_per_streak() {
    let mut backoff = AcceptBackoff::default();
    let delays: Vec<(u128, bool)> = (0..10)
        .map(|_| backoff.failed())
        .map(|(delay, log)| (delay.as_millis(), log))
        .collect();
    assert_eq!(
        delays,
        [
            (5, true),
            (10, false),
            (20, false),
            (40, false),
            (80, false),
            (160, false),
            (320, false),
            (640, false),
            (1000, false),
            (1000, false)
        ]
    );
    assert_eq!(backoff.succeeded(), 10);
    assert_eq!(backoff.failed(), (FIRST_DELAY, true), "a new streak");
}

/// Fails every accept as a process at its open-file limit does.
struct OutOfFiles {
    calls: Arc<AtomicUsize>,
}

impl Accept for OutOfFiles {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> io::Result<DuplexStream> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }
}

#[tokio::test]
async fn failing_accepts_back_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let incoming = OutOfFiles {
        calls: Arc::clone(&calls),
    };
    let task = tokio::spawn(serve(incoming, Limits::default(), ok));
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    // 5 + 10 + 20 + 40 + 80 + 160 ms: six or seven tries, not millions.
    let tried = calls.load(Ordering::Relaxed);
    assert!((4..=10).contains(&tried), "{tried} accepts in 300 ms");
}

async fn listening(limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, limits, ok));
    address
}

/// Sends one keep-alive request and reads its response; `None` once the
/// server has closed the connection.
async fn exchange(stream: &mut TcpStream) -> Option<String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut buffer = vec![0; 1024];
    let read = stream.read(&mut buffer).await.ok()?;
    (read > 0).then(|| String::from_utf8_lossy(&buffer[..read]).into_owned())
}

#[tokio::test]
async fn a_client_polling_within_the_timeouts_is_still_closed_at_the_lifetime() {
    let limits = Limits {
        lifetime: Duration::from_millis(400),
        ..Limits::default()
    };
    let address = listening(limits).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    while let Some(response) = exchange(&mut stream).await {
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        answered += 1;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after {answered} requests"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 2, "{answered}");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let limits = Limits {
        connections: 1,
        ..Limits::default()
    };
    let address = listening(limits).await;
    let idle = TcpStream::connect(address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut waiting = TcpStream::connect(address).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), exchange(&mut waiting)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    drop(idle);
    let mut buffer = vec![0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
}
