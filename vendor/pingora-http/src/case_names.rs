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

//! How a header keeps the case its names were given in.
//!
//! Most names arrive or are inserted in lower case (HTTP/2 and most HTTP/1 clients and servers
//! send them so), which is how [`HeaderName`] stores them already. Those need no record: only the
//! names given in another case do, in a short list of exceptions, one case per name. A second
//! map parallel to the value map, one case per value, is built only when that is not enough: a
//! name given in two cases, or more than [`MAX_EXCEPTIONS`] names not in lower case. What is
//! written is the same either way.

use crate::case_header_name::{titled_header_name_str, CaseHeaderName};
use crate::{CaseMap, HMap, HeaderNameVariant, KnownHeaderName};
use bytes::BufMut;
use http::header::{HeaderName, HeaderValue};
use pingora_error::{ErrorType::*, OrErr, Result};

/// Names kept in the list of exceptions before the parallel map is built.
const MAX_EXCEPTIONS: usize = 8;

#[derive(Debug, Clone)]
pub(crate) enum CaseNames {
    /// No case kept: names are written title-cased where known, else as stored (lower case).
    Titled,
    /// Names are written as given: in lower case, except these, each for all values of its name.
    Given(Vec<(HeaderName, CaseHeaderName)>),
    /// Names as given, one per value, in a map parallel to the value map.
    Map(CaseMap),
}

/// How `name` was given, when not in lower case.
fn exception(name: &HeaderName, case: &CaseHeaderName) -> Option<CaseHeaderName> {
    (case.as_slice() != name.as_str().as_bytes()).then(|| case.clone())
}

impl CaseNames {
    pub(crate) fn given() -> Self {
        CaseNames::Given(Vec::new())
    }

    pub(crate) fn has_case(&self) -> bool {
        !matches!(self, CaseNames::Titled)
    }

    /// Records the case of a value appended under `name` (the value map not yet changed).
    pub(crate) fn append(
        &mut self,
        values: &HMap,
        name: &HeaderName,
        case: CaseHeaderName,
    ) -> Result<()> {
        if let CaseNames::Given(list) = self {
            let held = list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.as_slice());
            let given = exception(name, &case);
            if held == given.as_ref().map(CaseHeaderName::as_slice) {
                // The case already recorded for the name (for a lower-case name not in the
                // list: none), whether or not the name has values yet. For a name without
                // values, what an insert records (below) would leave the list as it is too,
                // so the value map need not be looked up: the common case of a header parsed
                // from the wire, every name in lower case, costs no lookup here.
                return Ok(());
            }
            if !values.contains_key(name) {
                // The name's first value: its case is recorded as an insert records it.
                return self.insert(values, name, case);
            }
            // The name is given in a second case: one case per value from here on.
            self.build_map(values)?;
        }
        if let CaseNames::Map(map) = self {
            map.try_append(name.clone(), case)
                .or_err(InvalidHTTPHeader, "header name map size overflows MAX_SIZE")?;
        }
        Ok(())
    }

    /// Records the case of `name`, whose values an insert replaces.
    pub(crate) fn insert(
        &mut self,
        values: &HMap,
        name: &HeaderName,
        case: CaseHeaderName,
    ) -> Result<()> {
        if let CaseNames::Given(list) = self {
            let at = list.iter().position(|(n, _)| n == name);
            match (exception(name, &case), at) {
                (None, None) => return Ok(()),
                (None, Some(i)) => {
                    list.swap_remove(i);
                    return Ok(());
                }
                (Some(g), Some(i)) => {
                    list[i].1 = g;
                    return Ok(());
                }
                (Some(g), None) if list.len() < MAX_EXCEPTIONS => {
                    list.push((name.clone(), g));
                    return Ok(());
                }
                (Some(_), None) => self.build_map(values)?,
            }
        }
        if let CaseNames::Map(map) = self {
            map.try_insert(name.clone(), case)
                .or_err(InvalidHTTPHeader, "header name map size overflows MAX_SIZE")?;
        }
        Ok(())
    }

    /// What [`Self::append`] does for `name` given in lower case, when that needs no case: true
    /// when nothing is to be recorded (no case kept, or none on record for the name, whose
    /// values then are written in lower case already), false when the caller must take
    /// [`Self::append`].
    pub(crate) fn appends_lower_as_is(&self, name: &HeaderName) -> bool {
        match self {
            CaseNames::Titled => true,
            CaseNames::Given(list) => !list.iter().any(|(n, _)| n == name),
            CaseNames::Map(_) => false,
        }
    }

    /// What [`Self::insert`] does for `name` given in lower case, when that needs no case: true
    /// when done (no case kept; or the name's case on record, if any, forgotten: its values
    /// are replaced), false when the caller must take [`Self::insert`].
    pub(crate) fn inserts_lower_as_is(&mut self, name: &HeaderName) -> bool {
        match self {
            CaseNames::Titled => true,
            CaseNames::Given(list) => {
                if let Some(i) = list.iter().position(|(n, _)| n == name) {
                    list.swap_remove(i);
                }
                true
            }
            CaseNames::Map(_) => false,
        }
    }

    /// After names were removed from the value map: forgets their cases.
    pub(crate) fn removed<K: http::header::AsHeaderName + Clone>(
        &mut self,
        values: &HMap,
        name: K,
    ) {
        match self {
            CaseNames::Titled => {}
            CaseNames::Given(list) => list.retain(|(n, _)| values.contains_key(n)),
            CaseNames::Map(map) => {
                map.remove(name);
            }
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) -> Result<()> {
        if let CaseNames::Map(map) = self {
            map.try_reserve(additional)
                .or_err(InvalidHTTPHeader, "header name map size overflows MAX_SIZE")?;
        }
        Ok(())
    }

    /// Builds the parallel map from the values so far and the exceptions.
    fn build_map(&mut self, values: &HMap) -> Result<()> {
        let CaseNames::Given(list) = self else {
            return Ok(());
        };
        let mut map = CaseMap::try_with_capacity(values.capacity())
            .or_err(InvalidHTTPHeader, "header name map size overflows MAX_SIZE")?;
        for (name, _) in values.iter() {
            let case = match list.iter().find(|(n, _)| n == name) {
                Some((_, c)) => c.clone(),
                None => CaseHeaderName::from_slice(name.as_str().as_bytes()),
            };
            map.try_append(name.clone(), case)
                .or_err(InvalidHTTPHeader, "header name map size overflows MAX_SIZE")?;
        }
        *self = CaseNames::Map(map);
        Ok(())
    }

    /// Each value with its name as written, in the value map's order (nothing when no case is kept).
    pub(crate) fn iter<'a>(
        &'a self,
        values: &'a HMap,
    ) -> impl Iterator<Item = (&'a [u8], &'a HeaderValue)> + 'a {
        let (given, map) = match self {
            CaseNames::Titled => (None, None),
            CaseNames::Given(list) => (Some(list), None),
            CaseNames::Map(map) => (None, Some(map)),
        };
        let given = given.into_iter().flat_map(move |list| {
            values.iter().map(move |(name, value)| {
                let written = match list.iter().find(|(n, _)| n == name) {
                    Some((_, c)) => c.as_slice(),
                    None => name.as_str().as_bytes(),
                };
                (written, value)
            })
        });
        let mapped = map.into_iter().flat_map(move |map| {
            map.iter()
                .zip(values.iter())
                .map(|((h1, name), (h2, value))| {
                    // in case the header iteration order changes in future versions of HMap
                    assert_eq!(h1, h2, "header iter mismatch {}, {}", h1, h2);
                    (name.as_slice(), value)
                })
        });
        given.chain(mapped)
    }

    pub(crate) fn map<F: FnMut(HeaderNameVariant, &HeaderValue) -> Result<()>>(
        &self,
        values: &HMap,
        mut f: F,
    ) -> Result<()> {
        match self {
            CaseNames::Map(map) => {
                for ((header, case_header), (header2, val)) in map.iter().zip(values.iter()) {
                    if header != header2 {
                        // in case the header iteration order changes in future versions of HMap
                        panic!("header iter mismatch {}, {}", header, header2)
                    }
                    f(HeaderNameVariant::Case(case_header), val)?;
                }
            }
            CaseNames::Given(list) => {
                for (header, value) in values {
                    match list.iter().find(|(n, _)| n == header) {
                        Some((_, c)) => f(HeaderNameVariant::Case(c), value)?,
                        None => f(HeaderNameVariant::Titled(header.as_str()), value)?,
                    }
                }
            }
            CaseNames::Titled => {
                for (header, value) in values {
                    let titled = titled_header_name_str(header).unwrap_or(header.as_str());
                    f(HeaderNameVariant::Titled(titled), value)?;
                }
            }
        }
        Ok(())
    }

    /// How `name` is written: as given where case is kept, else as [`Self::write_h1`] writes
    /// a name without a case (title-cased where known, else as stored).
    pub(crate) fn wire_name<'a>(&self, name: &'a KnownHeaderName) -> &'a [u8] {
        match self {
            CaseNames::Titled => titled_header_name_str(name.name())
                .unwrap_or(name.name().as_str())
                .as_bytes(),
            _ => name.case_bytes(),
        }
    }

    /// Writes the header in HTTP/1.1 wire format.
    pub(crate) fn write_h1(&self, values: &HMap, buf: &mut impl BufMut) {
        let mut line = |name: &[u8], value: &HeaderValue| {
            buf.put_slice(name);
            buf.put_slice(b": ");
            buf.put_slice(value.as_ref());
            buf.put_slice(b"\r\n");
        };
        match self {
            CaseNames::Titled => {
                for (header, value) in values {
                    let titled = titled_header_name_str(header).unwrap_or(header.as_str());
                    line(titled.as_bytes(), value);
                }
            }
            _ => self
                .iter(values)
                .for_each(|(name, value)| line(name, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KnownHeaderName, RequestHeader, ResponseHeader};

    fn wire(resp: &ResponseHeader) -> String {
        let mut buf = Vec::new();
        resp.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn lower_case_names_need_no_record() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("content-type", "a").unwrap();
        resp.insert_header("x-b", "b").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.is_empty()));
        assert_eq!(wire(&resp), "content-type: a\r\nx-b: b\r\n");
        assert!(resp.has_case());
    }

    #[test]
    fn a_few_names_in_another_case_are_exceptions() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("content-type", "a").unwrap();
        resp.insert_header(http::header::DATE, "d").unwrap();
        resp.append_header("X-Two", "1").unwrap();
        resp.append_header("X-Two", "2").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.len() == 2));
        assert_eq!(
            wire(&resp),
            "content-type: a\r\nDate: d\r\nX-Two: 1\r\nX-Two: 2\r\n"
        );
        // Inserted again in lower case, the name is written so.
        resp.insert_header("date", "e").unwrap();
        resp.remove_header("x-two");
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.is_empty()));
        assert_eq!(wire(&resp), "content-type: a\r\ndate: e\r\n");
    }

    #[test]
    fn appending_in_the_recorded_case_changes_nothing() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("x-a", "1").unwrap();
        resp.append_header("X-B", "2").unwrap();
        resp.append_header("x-a", "3").unwrap();
        resp.append_header("X-B", "4").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.len() == 1));
        assert_eq!(wire(&resp), "x-a: 1\r\nx-a: 3\r\nX-B: 2\r\nX-B: 4\r\n");
        // A value removed behind the case list's back (as code inside this crate could): appended
        // again in the case the list still holds, the name is written in that case.
        resp.base.headers.remove("x-b");
        resp.append_header("X-B", "5").unwrap();
        resp.append_header("x-c", "6").unwrap();
        assert_eq!(wire(&resp), "x-a: 1\r\nx-a: 3\r\nX-B: 5\r\nx-c: 6\r\n");
        // In lower case, over a stale record: the record goes, as an insert drops it.
        resp.base.headers.remove("x-b");
        resp.append_header("x-b", "7").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.is_empty()));
        assert_eq!(wire(&resp), "x-a: 1\r\nx-a: 3\r\nx-c: 6\r\nx-b: 7\r\n");
    }

    #[test]
    fn known_lower_case_names_keep_the_cases_on_record() {
        static LOWER: KnownHeaderName = KnownHeaderName::from_static("x-b");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("X-A", "1").unwrap();
        resp.append_header(&LOWER, "2").unwrap();
        resp.append_header(&LOWER, "3").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.len() == 1));
        assert_eq!(wire(&resp), "X-A: 1\r\nx-b: 2\r\nx-b: 3\r\n");
        // Another case on record for the name: appended in lower case, it takes the map.
        resp.insert_header("X-B", "4").unwrap();
        resp.append_header(&LOWER, "5").unwrap();
        assert!(matches!(&resp.case, CaseNames::Map(_)));
        assert_eq!(wire(&resp), "X-A: 1\r\nX-B: 4\r\nx-b: 5\r\n");
        // Inserted in lower case over a name on record: the record goes.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("X-B", "1").unwrap();
        resp.insert_header(&LOWER, "2").unwrap();
        assert!(matches!(&resp.case, CaseNames::Given(l) if l.is_empty()));
        assert_eq!(wire(&resp), "x-b: 2\r\n");
        // No case kept: written titled where known, else as stored, as before.
        let mut resp =
            ResponseHeader::from(ResponseHeader::build(200, None).unwrap().as_owned_parts());
        resp.insert_header(&LOWER, "1").unwrap();
        resp.append_header(&LOWER, "2").unwrap();
        assert!(!resp.has_case());
        assert_eq!(wire(&resp), "x-b: 1\r\nx-b: 2\r\n");
    }

    #[test]
    fn one_name_in_two_cases_builds_the_map() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("set-cookie", "a").unwrap();
        resp.append_header("x-y", "b").unwrap();
        resp.append_header("Set-Cookie", "c").unwrap();
        assert!(matches!(&resp.case, CaseNames::Map(_)));
        assert_eq!(wire(&resp), "set-cookie: a\r\nSet-Cookie: c\r\nx-y: b\r\n");
    }

    #[test]
    fn many_exceptions_build_the_map() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let names: Vec<String> = (0..12).map(|i| format!("X-H{i}")).collect();
        for n in &names {
            req.append_header(n.clone(), "v").unwrap();
        }
        assert!(matches!(&req.case, CaseNames::Map(_)));
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        let expected: String = names.iter().map(|n| format!("{n}: v\r\n")).collect();
        assert_eq!(String::from_utf8(buf).unwrap(), expected);
    }

    /// The old representation, a case per value in a parallel map, as the reference.
    #[derive(Default)]
    struct Reference {
        cases: CaseMap,
        values: HMap,
    }

    impl Reference {
        fn wire(&self) -> Vec<u8> {
            let mut buf = Vec::new();
            for ((_, c), (_, v)) in self.cases.iter().zip(self.values.iter()) {
                buf.extend_from_slice(c.as_slice());
                buf.extend_from_slice(b": ");
                buf.extend_from_slice(v.as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            buf
        }
    }

    #[test]
    fn any_sequence_writes_what_the_parallel_map_wrote() {
        const SPELLINGS: [&str; 9] = [
            "date",
            "Date",
            "DATE",
            "x-a",
            "X-A",
            "x-b",
            "X-B",
            "x-c",
            "connection",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..2000 {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            let mut reference = Reference::default();
            for step in 0..(1 + next(14)) {
                let spelt = SPELLINGS[next(SPELLINGS.len() as u64) as usize];
                let name = HeaderName::from_bytes(spelt.as_bytes()).unwrap();
                let case = CaseHeaderName::from_slice(spelt.as_bytes());
                let value = HeaderValue::from_str(&format!("{round}-{step}")).unwrap();
                // The name as a string, or checked once (a lower-case one takes the short way).
                let known = KnownHeaderName::new(spelt).unwrap();
                let as_known = next(2) == 0;
                match next(4) {
                    0 | 1 => {
                        if as_known {
                            resp.append_header(&known, value.clone()).unwrap();
                        } else {
                            resp.append_header(spelt.to_string(), value.clone())
                                .unwrap();
                        }
                        reference.cases.append(name.clone(), case);
                        reference.values.append(name, value);
                    }
                    2 => {
                        if as_known {
                            resp.insert_header(&known, value.clone()).unwrap();
                        } else {
                            resp.insert_header(spelt.to_string(), value.clone())
                                .unwrap();
                        }
                        reference.cases.insert(name.clone(), case);
                        reference.values.insert(name, value);
                    }
                    _ => {
                        resp.remove_header(&name);
                        if reference.values.remove(&name).is_some() {
                            reference.cases.remove(&name);
                        }
                    }
                }
                let mut buf = Vec::new();
                resp.header_to_h1_wire(&mut buf);
                assert_eq!(buf, reference.wire(), "round {round} step {step}");
                let cloned = resp.clone();
                let mut again = Vec::new();
                cloned.header_to_h1_wire(&mut again);
                assert_eq!(again, buf);
            }
        }
    }

    /// A field appended encoded is written as the same field appended to the map would be,
    /// after the map's; converted to parts (HTTP/2, clones to parts) it becomes a field.
    #[test]
    fn an_encoded_field_is_written_as_an_appended_one() {
        let names = [
            KnownHeaderName::from_static("x-request-id"),
            KnownHeaderName::new("X-Mixed-Case").unwrap(),
            KnownHeaderName::new("Content-Type").unwrap(),
            KnownHeaderName::from_static("date"),
        ];
        let values: [&[u8]; 4] = [b"abc", b"", b"a\tb c", b"\xc3\xa9 obs-text"];
        for build in [ResponseHeader::build, ResponseHeader::build_no_case] {
            for (i, name) in names.iter().enumerate() {
                let value = values[i % values.len()];
                let mut by_map = build(200, None).unwrap();
                let mut by_line = build(200, None).unwrap();
                for r in [&mut by_map, &mut by_line] {
                    r.append_header("server", "s").unwrap();
                    r.append_header("X-Up", "u").unwrap();
                }
                by_map.append_header(name, value).unwrap();
                by_line.append_encoded_header(name, value).unwrap();
                assert_eq!(wire(&by_line), wire(&by_map), "{name:?}");
                assert_eq!(by_line.headers.len(), 2);
                assert!(by_line.headers.get(name.name()).is_none());
                let parts = by_line.as_owned_parts();
                assert_eq!(parts.headers, by_map.as_owned_parts().headers);
                assert_eq!(wire(&by_line.clone()), wire(&by_map));
                let boxed: Box<http::response::Parts> = Box::new(by_line.clone()).into();
                assert_eq!(boxed.headers, by_map.as_owned_parts().headers);
                let owned: http::response::Parts = by_line.into();
                assert_eq!(owned.headers, by_map.as_owned_parts().headers);
            }
        }
    }

    /// The same for a request: written after the map's fields, a field where it becomes parts.
    #[test]
    fn an_encoded_request_field_is_written_as_an_appended_one() {
        let names = [
            KnownHeaderName::from_static("x-forwarded-for"),
            KnownHeaderName::new("Authorization").unwrap(),
        ];
        for name in &names {
            let mut by_map = RequestHeader::build("POST", b"/v1/x", None).unwrap();
            let mut by_line = RequestHeader::build("POST", b"/v1/x", None).unwrap();
            for r in [&mut by_map, &mut by_line] {
                r.append_header("Host", "h").unwrap();
                r.append_header("content-length", "2").unwrap();
            }
            by_map.append_header(name, "a, b").unwrap();
            by_line.append_encoded_header(name, b"a, b").unwrap();
            let wire = |r: &RequestHeader| {
                let mut buf = Vec::new();
                r.header_to_h1_wire(&mut buf);
                buf
            };
            assert_eq!(wire(&by_line), wire(&by_map));
            assert_eq!(wire(&by_line.clone()), wire(&by_map));
            assert!(by_line.headers.get(name.name()).is_none());
            assert_eq!(by_line.as_owned_parts().headers, by_map.headers);
            let parts: http::request::Parts = by_line.into();
            assert_eq!(parts.headers, by_map.headers);
        }
    }

    #[test]
    fn an_encoded_field_refuses_what_a_value_refuses() {
        let name = KnownHeaderName::from_static("x-a");
        for bad in [&b"a\r\nx-b: c"[..], b"\n", b"\0", b"\x7f", b"a\rb"] {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            assert!(resp.append_encoded_header(&name, bad).is_err());
            assert!(HeaderValue::from_bytes(bad).is_err());
            assert!(resp.encoded_headers().is_empty());
        }
        // Every byte a value takes, an encoded field takes.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for b in 0..=255u8 {
            assert_eq!(
                resp.append_encoded_header(&name, &[b'v', b]).is_ok(),
                HeaderValue::from_bytes(&[b'v', b]).is_ok(),
                "{b}"
            );
        }
        let parts = resp.as_owned_parts();
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 256 - 32);
    }

    /// Fields appended in one call are written as the same fields appended one by one, for a
    /// response and a request, with and without case kept.
    #[test]
    fn fields_appended_at_once_are_written_as_one_by_one() {
        let names = [
            KnownHeaderName::from_static("x-request-id"),
            KnownHeaderName::new("X-Mixed-Case").unwrap(),
            KnownHeaderName::from_static("accept-encoding"),
            KnownHeaderName::new("Content-Type").unwrap(),
        ];
        let values: [&[u8]; 4] = [b"abc", b"", b"a\tb c", b"\xc3\xa9 obs-text"];
        for build in [ResponseHeader::build, ResponseHeader::build_no_case] {
            let mut one_by_one = build(200, None).unwrap();
            let mut at_once = build(200, None).unwrap();
            for r in [&mut one_by_one, &mut at_once] {
                r.append_header("X-Up", "u").unwrap();
                r.append_encoded_header(&names[0], b"first").unwrap();
            }
            for (name, value) in names.iter().zip(values) {
                one_by_one.append_encoded_header(name, value).unwrap();
            }
            at_once
                .append_encoded_headers(8, |f| {
                    for (name, value) in names.iter().zip(values) {
                        f.field(name, value);
                    }
                })
                .unwrap();
            assert_eq!(wire(&at_once), wire(&one_by_one));
            assert_eq!(at_once.encoded_headers(), one_by_one.encoded_headers());
            assert_eq!(
                at_once.as_owned_parts().headers,
                one_by_one.as_owned_parts().headers
            );
        }
        let request = |case: bool| {
            let mut r = RequestHeader::build("POST", b"/v1/x", None).unwrap();
            if !case {
                r = RequestHeader::build_no_case("POST", b"/v1/x", None).unwrap();
            }
            r.append_header("Host", "h").unwrap();
            r
        };
        for case in [true, false] {
            let mut one_by_one = request(case);
            let mut at_once = request(case);
            for (name, value) in names.iter().zip(values) {
                one_by_one.append_encoded_header(name, value).unwrap();
            }
            at_once
                .append_encoded_headers(0, |f| {
                    for (name, value) in names.iter().zip(values) {
                        f.field(name, value);
                    }
                })
                .unwrap();
            let mut a = Vec::new();
            let mut b = Vec::new();
            at_once.header_to_h1_wire(&mut a);
            one_by_one.header_to_h1_wire(&mut b);
            assert_eq!(a, b);
            assert_eq!(
                at_once.as_owned_parts().headers,
                one_by_one.as_owned_parts().headers
            );
        }
    }

    /// A value refused among fields appended at once fails the call and keeps none of them;
    /// the lines appended before stay.
    #[test]
    fn fields_appended_at_once_are_refused_together() {
        let name = KnownHeaderName::from_static("x-a");
        for bad in [&b"a\r\nx-b: c"[..], b"\n", b"\0", b"\x7f", b"a\rb"] {
            for at in 0..3 {
                let mut resp = ResponseHeader::build(200, None).unwrap();
                resp.append_encoded_header(&name, b"kept").unwrap();
                let before = resp.encoded_headers().to_vec();
                let appended = resp.append_encoded_headers(64, |f| {
                    for i in 0..3 {
                        f.field(&name, if i == at { bad } else { b"ok" });
                    }
                });
                assert!(appended.is_err());
                assert_eq!(resp.encoded_headers(), before);
            }
        }
    }

    /// The word-at-a-time check takes what a value takes, at every position of a word and in
    /// the remainder, next to any other byte.
    #[test]
    fn an_encoded_value_is_checked_as_a_value_is() {
        let name = KnownHeaderName::from_static("x-a");
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 23] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let mut v: Vec<u8> = (0..len)
                        .map(|i| b"a0-_ ~\t\x80\xff"[(seed >> (i % 60)) as usize % 9])
                        .collect();
                    v[pos] = b;
                    let mut resp = ResponseHeader::build(200, None).unwrap();
                    assert_eq!(
                        resp.append_encoded_header(&name, &v).is_ok(),
                        HeaderValue::from_bytes(&v).is_ok(),
                        "{v:?}"
                    );
                }
            }
        }
    }
}
