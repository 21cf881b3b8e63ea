//! Raw HTTP/1.1 on a socket, for test peers that must see or shape exact bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one message framed by `Content-Length` (none: no body) from `sock` onto `buf`, which
/// may already hold the start of it. Returns the head, lower-cased, and the message's length in
/// `buf` (the caller drains it); `None` when the peer closes or fails first.
pub async fn read_message<R: AsyncRead + Unpin>(sock: &mut R, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    let head_end = read_head(sock, buf).await?;
    let mut chunk = [0u8; 16 * 1024];
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, head_end + len))
}

/// Reads from `sock` onto `buf` until it holds a whole head (through the blank line); returns
/// where the head ends. `None` when the peer closes or fails first.
pub async fn read_head<R: AsyncRead + Unpin>(sock: &mut R, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
