//! Streamed answers: one SSE event per token, produced as time passes and handed to hyper one
//! frame at a time, so each event leaves when it is produced (hyper flushes whenever the body
//! is pending).
//!
//! Order: wait `ttft`; for chat a role chunk; token 1; then `itl` before every further token;
//! a chunk with `finish_reason`; the usage chunk (`"choices":[]`) only if asked, with the replica
//! model's `x_sim_timing` when it is on; `[DONE]`.
//! The waits run on one schedule from when the request was read ([`Pace::start`]), as a server's
//! time to first token counts from the request's arrival: writing the response header (and
//! being descheduled meanwhile) does not delay the first token.
//! Lines end with LF unless `--line-ending` says otherwise.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prometheus::IntCounter;

use super::openai::{push_token, Answer, Kind};
use super::response::Body;

/// How a streamed answer is produced.
pub struct Pace {
    /// When the request was read: the schedule's origin.
    pub start: tokio::time::Instant,
    pub ttft: Duration,
    pub itl: Duration,
    /// Cut the connection after this many tokens (the `close` failure).
    pub cut_after: Option<u32>,
    pub include_usage: bool,
    /// Line ending of every SSE line (`--line-ending`).
    pub eol: &'static str,
    /// The replica model's sequence: each token waits for its engine step instead of
    /// `ttft` / `itl`.
    pub engine: Option<super::engine::SeqHandle>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Wait,
    Tokens,
    Finish,
    Usage,
    Done,
    End,
}

struct Gen<G> {
    answer: Answer,
    pace: Pace,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[` — JSON-escaped once.
    head: String,
    phase: Phase,
    /// Next token, 1-based.
    next: u32,
    /// When the last token was due (`Pace::start` before the first).
    due: tokio::time::Instant,
    generated: IntCounter,
    /// Held until the body ends or is dropped (the in-flight gauge guard).
    _guard: G,
}

/// The SSE body of an answer; `guard` lives as long as the body.
pub fn body<G: Send + 'static>(answer: Answer, pace: Pace, generated: IntCounter, guard: G) -> Body {
    let object = match answer.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Text => "text_completion",
    };
    let head = format!(
        "data: {{\"id\":{},\"object\":\"{object}\",\"created\":{},\"model\":{},\"choices\":[",
        json_str(&answer.id),
        answer.created,
        json_str(&answer.model),
    );
    let due = pace.start;
    let gen = Gen { answer, pace, head, phase: Phase::Wait, next: 1, due, generated, _guard: guard };
    let events = stream::unfold(gen, |mut g| async move {
        let item = g.step().await?;
        Some((item.map(Frame::data), g))
    });
    StreamBody::new(events).boxed_unsync()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

impl<G> Gen<G> {
    /// The next event, or an error that makes hyper cut the connection, or the end.
    async fn step(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            match self.phase {
                Phase::Wait => {
                    self.pace_token(self.pace.ttft).await;
                    self.phase = Phase::Tokens;
                    if self.answer.kind == Kind::Chat {
                        return Some(Ok(self.event(
                            r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#,
                        )));
                    }
                }
                Phase::Tokens if self.next > self.answer.tokens => self.phase = Phase::Finish,
                Phase::Tokens => {
                    if self.pace.cut_after.is_some_and(|cut| self.next > cut) {
                        return Some(self.cut().await);
                    }
                    if self.next > 1 {
                        self.pace_token(self.pace.itl).await;
                    }
                    self.generated.inc();
                    let event = self.token_event(self.next);
                    self.next += 1;
                    return Some(Ok(event));
                }
                Phase::Finish => {
                    self.phase = if self.pace.include_usage { Phase::Usage } else { Phase::Done };
                    let finish = self.answer.finish;
                    let choice = match self.answer.kind {
                        Kind::Chat => {
                            format!(r#"{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}"#)
                        }
                        Kind::Text => format!(r#"{{"index":0,"text":"","logprobs":null,"finish_reason":"{finish}"}}"#),
                    };
                    return Some(Ok(self.event(&choice)));
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    let usage = serde_json::to_string(&self.answer.usage).unwrap_or_default();
                    // With the replica model on, where its time to first token went (docs/sim.md).
                    let timing = match self.pace.engine.as_ref() {
                        Some(seq) => {
                            format!(",\"x_sim_timing\":{}", serde_json::to_string(&seq.timing()).unwrap_or_default())
                        }
                        None => String::new(),
                    };
                    return Some(Ok(self.event(&format!("],\"usage\":{usage}{timing}"))));
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(Ok(Bytes::from(format!("data: [DONE]{0}{0}", self.pace.eol))));
                }
                Phase::End => return None,
            }
        }
    }

    /// Waits until the next token exists: the engine's step, else `delay` after the last one
    /// was due (at once when that is past).
    async fn pace_token(&mut self, delay: Duration) {
        match self.pace.engine.as_mut() {
            Some(seq) => {
                seq.token().await;
            }
            None => {
                self.due += delay;
                sleep_until(self.due).await;
            }
        }
    }

    /// `head` + `choice` + `]}` + blank line. A `choice` starting with `]` closes the list
    /// itself (the usage chunk).
    fn event(&self, choice: &str) -> Bytes {
        let mut s = String::with_capacity(self.head.len() + choice.len() + 10);
        s.push_str(&self.head);
        s.push_str(choice);
        if !choice.starts_with(']') {
            s.push(']');
        }
        s.push('}');
        s.push_str(self.pace.eol);
        s.push_str(self.pace.eol);
        Bytes::from(s)
    }

    fn token_event(&self, i: u32) -> Bytes {
        let mut choice = String::with_capacity(96);
        choice.push_str(match self.answer.kind {
            Kind::Chat => r#"{"index":0,"delta":{"content":""#,
            Kind::Text => r#"{"index":0,"text":""#,
        });
        push_token(&mut choice, i);
        choice.push_str(match self.answer.kind {
            Kind::Chat => r#""},"logprobs":null,"finish_reason":null}"#,
            Kind::Text => r#"","logprobs":null,"finish_reason":null}"#,
        });
        self.event(&choice)
    }

    /// Lets hyper flush what was sent (it flushes when the body is pending), then fails.
    async fn cut(&mut self) -> Result<Bytes, io::Error> {
        self.phase = Phase::End;
        tokio::task::yield_now().await;
        Err(io::Error::new(io::ErrorKind::ConnectionAborted, "mcas-sim: simulated connection cut"))
    }
}

/// A non-streamed body that sends its first half and then cuts the connection.
pub fn cut_body(full: Vec<u8>) -> Body {
    let full = Bytes::from(full);
    let first: Result<Frame<Bytes>, io::Error> = Ok(Frame::data(full.slice(..full.len() / 2)));
    let events = stream::iter([first]).chain(stream::once(async {
        tokio::task::yield_now().await;
        Err(io::Error::new(io::ErrorKind::ConnectionAborted, "mcas-sim: simulated connection cut"))
    }));
    StreamBody::new(events).boxed_unsync()
}

/// Sleeps until `due` unless it has passed (no timer for a zero delay).
pub async fn sleep_until(due: tokio::time::Instant) {
    if due > tokio::time::Instant::now() {
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sim::openai::Usage;
    use tokio::time::{advance, Instant};

    /// The waits run on one schedule from `Pace::start`: a body first polled late (its header
    /// was being written, the task was descheduled) still has its first token at `start + ttft`,
    /// and the tokens after it `itl` apart on that schedule.
    #[tokio::test(start_paused = true)]
    async fn tokens_are_due_from_the_request_not_from_the_first_poll() {
        let answer = Answer {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            tokens: 3,
            finish: "stop",
            usage: Usage::new(5, 3, 0),
        };
        let start = Instant::now();
        let pace = Pace {
            start,
            ttft: Duration::from_millis(100),
            itl: Duration::from_millis(10),
            cut_after: None,
            include_usage: false,
            eol: "\n",
            engine: None,
        };
        let mut body = body(answer, pace, IntCounter::new("t", "t").unwrap(), ());
        advance(Duration::from_millis(80)).await;
        let mut at = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            if String::from_utf8_lossy(&data).contains("\"content\":\"tok") {
                at.push(start.elapsed().as_millis());
            }
        }
        assert_eq!(at, [100, 110, 120]);
    }
}
