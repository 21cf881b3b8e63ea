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

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The name as written (case kept) and as looked up. The default parses the written form,
    /// which validates it and, for a name outside the standard set, copies it;
    /// [`KnownHeaderName`] has both at hand.
    fn into_case_and_name(self) -> Result<(CaseHeaderName, HeaderName)>
    where
        Self: Sized,
    {
        let case = self.into_case_header_name();
        let name = HeaderName::from_bytes(case.as_slice())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((case, name))
    }

    /// The name, when it is known without a look at it to be written as it is stored (in lower
    /// case): then a header with no other case on record for it needs only the name. `None`
    /// (the default) when not known so; [`KnownHeaderName`] knows.
    fn lower_case_name(&self) -> Option<HeaderName> {
        None
    }
}

/// A header name checked once (typically kept in a `static` or a config), with the case to
/// write it in. Inserting or appending it neither parses nor copies the name again, which a
/// `&'static str` name does on every call.
#[derive(Debug, Clone)]
pub struct KnownHeaderName {
    case: CaseHeaderName,
    name: HeaderName,
    /// `case` is `name` as stored (lower case).
    lower: bool,
}

impl KnownHeaderName {
    /// A lower-case name, written as is. Like [`HeaderName::from_static`], an invalid or
    /// upper-case name fails to compile in a `static` (and panics at run time).
    pub const fn from_static(name: &'static str) -> Self {
        KnownHeaderName {
            case: CaseHeaderName(Bytes::from_static(name.as_bytes())),
            name: HeaderName::from_static(name),
            lower: true,
        }
    }

    /// A name in any case, written in that case; checked here.
    pub fn new(case: &'static str) -> Result<Self> {
        let name = HeaderName::from_bytes(case.as_bytes())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok(KnownHeaderName {
            case: CaseHeaderName(Bytes::from_static(case.as_bytes())),
            lower: case.as_bytes() == name.as_str().as_bytes(),
            name,
        })
    }

    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The name as it is written where case is kept.
    pub(crate) fn case_bytes(&self) -> &[u8] {
        self.case.as_slice()
    }
}

impl IntoCaseHeaderName for &KnownHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self.case.clone()
    }

    fn into_case_and_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((self.case.clone(), self.name.clone()))
    }

    fn lower_case_name(&self) -> Option<HeaderName> {
        self.lower.then(|| self.name.clone())
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_header_names_keep_their_case_and_skip_the_parse() {
        static LOWER: KnownHeaderName = KnownHeaderName::from_static("x-ratelimit-limit-requests");
        let lower = &LOWER;
        let (case, name) = lower.into_case_and_name().unwrap();
        assert_eq!(case.as_slice(), b"x-ratelimit-limit-requests");
        assert_eq!(name.as_str(), "x-ratelimit-limit-requests");
        let titled = KnownHeaderName::new("X-Request-Id").unwrap();
        let (case, name) = (&titled).into_case_and_name().unwrap();
        assert_eq!(case.as_slice(), b"X-Request-Id");
        assert_eq!(name.as_str(), "x-request-id");
        assert!(lower.lower_case_name().is_some());
        assert!((&titled).lower_case_name().is_none());
        let given_lower = KnownHeaderName::new("x-request-id").unwrap();
        assert_eq!(
            (&given_lower).lower_case_name().as_ref(),
            Some(titled.name())
        );
        assert!("x-a".lower_case_name().is_none());
        assert!(KnownHeaderName::new("bad name").is_err());
        assert!(KnownHeaderName::new("").is_err());
    }

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
