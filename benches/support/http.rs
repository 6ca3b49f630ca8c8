//! The benches' HTTP client: one hyper HTTP/1 connection per worker, over loopback.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Opens a connection to `addr` (its driver runs on the current runtime).
pub async fn connect(addr: &str) -> http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends one request and reads the whole answer.
pub async fn send(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
) -> (StatusCode, Bytes) {
    sender.ready().await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}
