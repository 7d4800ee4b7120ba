//! Writing to the client: deliveries (plain, coalesced into one flush, or as
//! `batch_messages`), the drain at shutdown, and the end of the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::SinkExt;

use herald_proto::disconnect::Disconnect;
use herald_proto::server;
use herald_proto::time::now_ms;

use super::{Conn, Flow, Socket};
use crate::hub::Delivery;

/// Most frames written before one flush (write coalescing).
const MAX_WRITE_BATCH: usize = 64;
/// Most frames in one `batch_messages`.
const MAX_BATCH_FRAMES: usize = 100;
/// How long final frames (disconnect, close) may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends the close frame for `why`, giving a stuck socket a bounded time.
pub(super) async fn close<S: Socket>(socket: &mut S, why: &Disconnect) {
    let frame = CloseFrame {
        code: why.close_code(),
        reason: Utf8Bytes::from(why.reason()),
    };
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Sends a last text frame (a `disconnect`), giving a stuck socket a bounded time.
pub(super) async fn send_final<S: Socket>(socket: &mut S, text: String) {
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(Message::Text(Utf8Bytes::from(text))),
    )
    .await;
}

impl<S: Socket> Conn<S> {
    pub(super) async fn send_text(&mut self, text: String) -> Flow {
        match self.socket.send(Message::Text(Utf8Bytes::from(text))).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    /// Queues a frame in the socket's write buffer without flushing.
    pub(super) async fn feed(&mut self, msg: Message) -> Flow {
        match self.socket.feed(msg).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    pub(super) async fn flush(&mut self) -> Flow {
        match self.socket.flush().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    /// Writes queued deliveries, coalescing what is already waiting into one flush.
    pub(super) async fn write_deliveries(&mut self, first: Arc<Delivery>) -> Flow {
        self.batch_now_ms = now_ms();
        let flow = if self.batch {
            self.write_batch(first).await
        } else {
            self.write_plain(first).await
        };
        self.flush_stats();
        flow
    }

    async fn write_plain(&mut self, first: Arc<Delivery>) -> Flow {
        let mut pending = Some(first);
        let mut written = 0usize;
        let (mut taken, mut taken_bytes) = (0u64, 0u64);
        while let Some(d) = pending.take() {
            taken += 1;
            taken_bytes += d.text.len() as u64;
            if self.keep(&d) {
                if let Flow::Gone = self.feed(Message::Text(d.text.clone())).await {
                    return Flow::Gone;
                }
                self.observe(&d);
                written += 1;
            }
            if written < MAX_WRITE_BATCH {
                pending = self.rx.try_recv().ok();
            }
        }
        self.shared.dequeued(taken, taken_bytes);
        self.flush().await
    }

    /// `batch_messages` mode: wait a moment for more, then send them as one frame.
    async fn write_batch(&mut self, first: Arc<Delivery>) -> Flow {
        // A kick cuts the window short; what is queued is still written, then the
        // loop ends the connection.
        tokio::select! {
            () = tokio::time::sleep(self.state.settings.batch_window) => {}
            () = self.shared.cancel.cancelled() => {}
        }
        let mut frames: Vec<Arc<Delivery>> = Vec::with_capacity(8);
        let mut next = Some(first);
        let (mut taken, mut taken_bytes) = (0u64, 0u64);
        while let Some(d) = next.take() {
            taken += 1;
            taken_bytes += d.text.len() as u64;
            if self.keep(&d) {
                frames.push(d);
            }
            if frames.len() < MAX_BATCH_FRAMES {
                next = self.rx.try_recv().ok();
            }
        }
        self.shared.dequeued(taken, taken_bytes);
        let text = match frames.len() {
            0 => return Flow::Continue,
            1 => frames[0].text.clone(),
            _ => Utf8Bytes::from(server::batch(frames.iter().map(|d| d.text.as_str()))),
        };
        if self.socket.send(Message::Text(text)).await.is_err() {
            return Flow::Gone;
        }
        for d in &frames {
            self.observe(d);
        }
        Flow::Continue
    }

    /// Whether a delivery is new to this client (see `floors`). Presence events
    /// (offset 0) have no position and always are. A backend command is not written: it is set aside for the loop to run once
    /// the deliveries before it are out.
    pub(super) fn keep(&mut self, d: &Delivery) -> bool {
        if let Some(cmd) = &d.command {
            self.commands.push(cmd.as_ref().clone());
            return false;
        }
        if self.floors.is_empty() || d.offset == 0 {
            return true;
        }
        match self.floors.get(&*d.channel) {
            Some((epoch, offset)) if **epoch == *d.epoch && d.offset <= *offset => false,
            Some(_) => {
                self.floors.remove(&*d.channel);
                true
            }
            None => true,
        }
    }

    /// Counts one written delivery into this connection's local tallies; they are
    /// folded into the shared metrics once per write batch ([`Self::flush_stats`]),
    /// so the hot path touches no shared cache line per message.
    fn observe(&mut self, d: &Delivery) {
        self.pending_out += 1;
        if d.published_ms > 0 {
            let ms = self.batch_now_ms.saturating_sub(d.published_ms);
            self.latency.observe(ms as f64 / 1000.0);
        }
    }

    fn flush_stats(&mut self) {
        if self.pending_out > 0 {
            self.shared
                .messages_out
                .fetch_add(self.pending_out, Ordering::Relaxed);
            self.state
                .metrics
                .messages_delivered
                .inc_by(self.pending_out);
            self.pending_out = 0;
            self.latency.flush();
        }
    }

    /// Writes what is queued (shutdown drain), bounded by the queue's size.
    pub(super) async fn drain(&mut self) {
        self.batch_now_ms = now_ms();
        let mut n = 0;
        while let Ok(d) = self.rx.try_recv() {
            self.shared.dequeued(1, d.text.len() as u64);
            if self.keep(&d) {
                let r = tokio::time::timeout(
                    CLOSE_WRITE_TIMEOUT,
                    self.socket.feed(Message::Text(d.text.clone())),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    return;
                }
                self.observe(&d);
            }
            n += 1;
            if n >= self.state.settings.queue_frames {
                break;
            }
        }
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.socket.flush()).await;
        self.flush_stats();
    }

    /// Ends the connection: counts it, sends the `disconnect` frame (if the reason
    /// has one) and closes.
    pub(super) async fn end(&mut self, why: &Disconnect) {
        self.state
            .metrics
            .disconnects
            .with_label_values(&[why.label()])
            .inc();
        if why == &Disconnect::HeartbeatTimeout {
            tracing::debug!("no traffic for two heartbeats; dropping");
        }
        if let Some(frame) = why.frame() {
            send_final(&mut self.socket, frame).await;
        }
        close(&mut self.socket, why).await;
    }
}
