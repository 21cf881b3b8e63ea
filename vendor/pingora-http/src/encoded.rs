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

    /// Appends the fields `fill` gives to an [EncodedFields], at once: room for `reserve`
    /// bytes made first, the values checked as they are written, one result for them all. When
    /// a value is refused, no line of them is kept.
    #[inline]
    pub(crate) fn append_all(
        &mut self,
        case: &CaseNames,
        reserve: usize,
        fill: impl FnOnce(&mut EncodedFields<'_>),
    ) -> Result<()> {
        let start = self.0.len();
        self.0.reserve(reserve);
        let mut fields = EncodedFields {
            lines: &mut self.0,
            case,
            valid: true,
        };
        fill(&mut fields);
        if fields.valid {
            return Ok(());
        }
        self.0.truncate(start);
        Err(Error::explain(
            InvalidHTTPHeader,
            "invalid value while append encoded",
        ))
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

/// Fields written as encoded lines in one call (`append_encoded_headers` of
/// [crate::RequestHeader] and [crate::ResponseHeader]): each [Self::field] writes its line
/// straight into the header's lines, inlined where the caller builds its values, and one result
/// says whether every value was valid. Per field this saves a call, its result and a check of
/// the room left.
pub struct EncodedFields<'a> {
    lines: &'a mut Vec<u8>,
    case: &'a CaseNames,
    valid: bool,
}

impl EncodedFields<'_> {
    /// Writes `name: value\r\n`, the name as `append_encoded_header` writes it. A value that
    /// is not a valid [HeaderValue] fails the whole call.
    #[inline(always)]
    pub fn field(&mut self, name: &KnownHeaderName, value: &[u8]) {
        self.valid &= valid_value(value);
        let written = self.case.wire_name(name);
        self.lines.extend_from_slice(written);
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }
}

/// Whether [HeaderValue::from_bytes] takes `v`: no control character but horizontal tab.
/// Eight bytes at a time ([`suspect`]), the last word overlapping the one before; a value of
/// fewer than eight bytes is one word made of its bytes (some read twice) and spaces. Only a
/// value with a suspect word (a control character, a tab, or DEL) is looked at byte by byte.
#[inline]
fn valid_value(v: &[u8]) -> bool {
    let word = |at: usize| u64::from_le_bytes(v[at..at + 8].try_into().expect("eight bytes"));
    let half = |at: usize| u32::from_le_bytes(v[at..at + 4].try_into().expect("four bytes"));
    let n = v.len();
    let clean = match n {
        0 => true,
        1..=3 => {
            const SPACES: u64 = 0x2020_2020_2020_2020 & !0xff_ffff;
            let x = v[0] as u64 | (v[n / 2] as u64) << 8 | (v[n - 1] as u64) << 16;
            !suspect(x | SPACES)
        }
        4..=7 => !suspect(half(0) as u64 | (half(n - 4) as u64) << 32),
        _ => (0..n - 8).step_by(8).all(|at| !suspect(word(at))) && !suspect(word(n - 8)),
    };
    clean || v.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

/// Whether a byte of `x` may be below 0x20 or equal to 0x7f: the high bit of a byte of `low`
/// is set when that byte is below 0x20, of `del` when it is 0x7f (the classic has-less and
/// has-zero tests, over bytes below 0x80). No false negatives; a false positive only costs the
/// byte-by-byte look.
#[inline]
fn suspect(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let ascii = !x & HIGH;
    let low = x.wrapping_sub(ONES * 0x20) & ascii;
    let y = x ^ (ONES * 0x7f);
    let del = y.wrapping_sub(ONES) & !y & HIGH;
    (low | del) != 0
}
