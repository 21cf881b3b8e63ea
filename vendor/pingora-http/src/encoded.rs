// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Header fields a caller appends already encoded (`name: value\r\n`), written after the map's
//! fields. For a proxy adding its own fields to every message, this skips per field the map's
//! hashing and probing, a value allocation, the case bookkeeping and the serialiser's four
//! writes. The lines are not in the map: where a header becomes [http] parts (HTTP/2, the
//! conversions), they are added to the fields.

use crate::case_names::CaseNames;
use crate::{HMap, KnownHeaderName};
use bytes::BufMut;
use http::header::{HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType::*, Result};

#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedLines(Vec<u8>);

impl EncodedLines {
    /// Appends `name: value\r\n`, the name written as `case` writes a name appended to the
    /// map. The value must be a valid [HeaderValue].
    pub(crate) fn append(
        &mut self,
        case: &CaseNames,
        name: &KnownHeaderName,
        value: &[u8],
    ) -> Result<()> {
        if !valid_value(value) {
            return Err(Error::explain(
                InvalidHTTPHeader,
                "invalid value while append encoded",
            ));
        }
        let written = case.wire_name(name);
        self.0.reserve(written.len() + value.len() + 4);
        self.0.extend_from_slice(written);
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
        Ok(())
    }

    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.0.reserve(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Writes the lines (after the map's, in HTTP/1.1 wire format).
    pub(crate) fn write(&self, buf: &mut impl BufMut) {
        if !self.0.is_empty() {
            buf.put_slice(&self.0);
        }
    }

    /// Appends the lines' fields to `headers` (each line was checked when appended).
    pub(crate) fn add_to(&self, headers: &mut HMap) {
        for line in self.0.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
    }
}

/// Whether [HeaderValue::from_bytes] takes `v`: no control character but horizontal tab.
/// Eight bytes at a time: a word with no byte below 0x20 and none equal to 0x7f passes whole
/// (values are mostly digits and tokens); the bytes of any other word are looked at one by one.
fn valid_value(v: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let byte_ok = |b: u8| (b >= 32 && b != 127) || b == b'\t';
    let mut words = v.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // High bit set in a byte of `low` when that byte is below 0x20, of `del` when it is
        // 0x7f (the classic has-less and has-zero tests, over bytes below 0x80): no false
        // negatives, and a false positive only costs the byte-by-byte look.
        let ascii = !x & HIGH;
        let low = x.wrapping_sub(ONES * 0x20) & ascii;
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGH;
        if (low | del) != 0 && !w.iter().all(|&b| byte_ok(b)) {
            return false;
        }
    }
    words.remainder().iter().all(|&b| byte_ok(b))
}
