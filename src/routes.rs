//! The route table: path patterns → a provider or `by_model`. The longest (most literal)
//! match wins. Patterns: `/exact`, `/v1/*` (trailing `*` or `**`: the rest of the path,
//! including nothing), `/a/*/b` (`*` inside: exactly one segment).

/// vLLM endpoints outside `/v1` (vLLM's `api_server.py` serves them at the root), routed by
/// model like `/v1/*` when `routes:` is absent.
pub const VLLM_ROOT_PATHS: [&str; 7] =
    ["/tokenize", "/detokenize", "/v2/rerank", "/rerank", "/score", "/classify", "/pooling"];

/// The route table used when the config has no `routes:`.
pub fn default_routes() -> Result<RouteTable, String> {
    let mut routes = vec![Route::new("/v1/*", Target::ByModel, None)?];
    for p in VLLM_ROOT_PATHS {
        routes.push(Route::new(p, Target::ByModel, None)?);
    }
    Ok(RouteTable::new(routes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Index into the runtime's providers.
    Provider(usize),
    /// Pick the first provider whose `models` match the request body's `model`.
    ByModel,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: String,
    segments: Vec<Segment>,
    pub target: Target,
    pub strip_prefix: Option<String>,
    /// A `/v1/…` route without `strip_prefix`: the provider URL's path stands in for `/v1` (so
    /// `…/openai/v1` maps `/v1/chat/completions` to `/openai/v1/chat/completions`); a URL
    /// without a path keeps `/v1`.
    pub implicit_v1: bool,
    /// One of vLLM's endpoints served beside `/v1` rather than under it ([`VLLM_ROOT_PATHS`]):
    /// sent to the provider URL's path with its final `/v1` removed.
    pub beside_v1: bool,
    /// Bounded label for metrics: the pattern as written. Shared with every request routed
    /// here (a copy per request would allocate).
    pub label: std::sync::Arc<str>,
    /// WebSocket, MCP and long-stream settings.
    /// Shared with every request routed here (not copied per request).
    pub opts: std::sync::Arc<RouteOpts>,
    /// `routes[].default_model`: the model of a request that names none.
    pub default_model: Option<String>,
}

/// What kind of backends a route leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteKind {
    /// OpenAI-compatible model servers.
    #[default]
    OpenAi,
    /// MCP servers: session ids and legacy endpoint URLs are sealed and pinned to a backend.
    Mcp,
}

/// Per-route stream settings (see `routes[]` in `conf/gateway.yaml`).
#[derive(Debug, Clone, Default)]
pub struct RouteOpts {
    pub websocket: bool,
    pub kind: RouteKind,
    /// Tunnel and stream idle timeout; `None`: the provider's read timeout.
    pub idle_timeout: Option<std::time::Duration>,
    pub heartbeat: Option<std::time::Duration>,
    pub max_streams: Option<usize>,
    pub max_tunnels: Option<usize>,
    pub max_streams_per_key: Option<usize>,
    pub max_tunnels_per_key: Option<usize>,
    /// `routes[].ping`: WebSocket keepalive by the gateway; `None`: off.
    pub ping: Option<Ping>,
}

/// The gateway pings the client of a tunnel silent for `interval` and closes the tunnel (1001
/// both ways) when no pong comes back within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl Route {
    pub fn new(pattern: &str, target: Target, strip_prefix: Option<String>) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path pattern {pattern:?} must start with \"/\""));
        }
        let parts: Vec<&str> = pattern[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let seg = match *p {
                "**" => Segment::Rest,
                "*" if last => Segment::Rest,
                "*" => Segment::One,
                lit if lit.contains('*') => {
                    return Err(format!("path pattern {pattern:?}: \"*\" must be a whole segment"))
                }
                lit => Segment::Literal(lit.to_string()),
            };
            if seg == Segment::Rest && !last {
                return Err(format!("path pattern {pattern:?}: \"**\" may only end a pattern"));
            }
            segments.push(seg);
        }
        let implicit_v1 = strip_prefix.is_none() && (pattern == "/v1" || pattern.starts_with("/v1/"));
        let beside_v1 = strip_prefix.is_none() && VLLM_ROOT_PATHS.contains(&pattern);
        Ok(Route {
            pattern: pattern.to_string(),
            segments,
            target,
            strip_prefix,
            implicit_v1,
            beside_v1,
            label: pattern.into(),
            opts: Default::default(),
            default_model: None,
        })
    }

    /// Matches exactly the same paths as `other` (`/v1/*` and `/v1/**`): one of the two
    /// could never be chosen.
    pub fn same_paths(&self, other: &Route) -> bool {
        self.segments == other.segments
    }

    /// The leading path to remove before the provider's base path is prefixed.
    pub fn strip_for(&self, base_path: &str) -> Option<&str> {
        if self.implicit_v1 {
            return (!base_path.is_empty()).then_some("/v1");
        }
        self.strip_prefix.as_deref().map(|p| p.trim_end_matches('/'))
    }

    /// The path sent upstream for canonical `path` on a provider whose URL has `base_path`.
    pub fn upstream_path(&self, base_path: &str, path: &str) -> String {
        if self.beside_v1 {
            return format!("{}{path}", base_path.strip_suffix("/v1").unwrap_or(base_path));
        }
        let stripped = match self.strip_for(base_path) {
            Some(prefix) => path.strip_prefix(prefix).unwrap_or(path),
            None => path,
        };
        let mut out = String::with_capacity(base_path.len() + stripped.len() + 1);
        out.push_str(base_path);
        if !stripped.starts_with('/') {
            out.push('/');
        }
        out.push_str(stripped);
        out
    }

    /// Matches a path (no query).
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.as_bytes().strip_prefix(b"/") else { return false };
        // What the segments matched so far left of the path (`None` once all of it is): a
        // literal is compared in place, only `*` looks for the segment's end.
        let mut left = Some(rest);
        for seg in &self.segments {
            let Some(r) = left else {
                // "/v1/*" also matches "/v1" itself.
                return *seg == Segment::Rest;
            };
            let end = match seg {
                Segment::Rest => return true,
                Segment::One => match r.iter().position(|&c| c == b'/').unwrap_or(r.len()) {
                    0 => return false,
                    end => end,
                },
                Segment::Literal(l) => match r.get(..l.len()) {
                    Some(head) if same(head, l.as_bytes()) && r.get(l.len()).is_none_or(|&c| c == b'/') => l.len(),
                    _ => return false,
                },
            };
            left = r.get(end + 1..);
        }
        left.is_none()
    }

    /// Orders routes: more literal segments first, then fewer wildcards.
    fn specificity(&self) -> (usize, usize, bool) {
        let literals = self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        let ones = self.segments.iter().filter(|s| **s == Segment::One).count();
        let rest = self.segments.contains(&Segment::Rest);
        (literals, usize::MAX - ones, !rest)
    }
}

/// A first path segment and the routes to try for a path that starts with it (positions in
/// the table, in its order).
type Bucket = (Box<[u8]>, Box<[u32]>);

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Most specific first: the first that matches wins.
    routes: Vec<Route>,
    /// The routes worth trying for a path, by the path's first segment: built with the
    /// table so a request tries the few routes that could match, not every route (each try
    /// reads the path again). Each list keeps the table's order.
    by_first: Vec<Bucket>,
    /// The routes whose first segment is a wildcard, in the table's order: the list for a
    /// first segment no route spells out.
    wild_first: Box<[u32]>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        let (by_first, wild_first) = index_by_first(&routes);
        RouteTable { routes, by_first, wild_first }
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.find_indexed(path).map(|(_, r)| r)
    }

    /// The route for `path` and its position in [`Self::routes`]: the first route in the
    /// table's order that matches, as a walk over every route would find.
    pub fn find_indexed(&self, path: &str) -> Option<(usize, &Route)> {
        // No route matches a path without the leading `/` ([`Route::matches`]).
        let rest = path.strip_prefix('/')?.as_bytes();
        let first = rest.iter().position(|&c| c == b'/').map_or(rest, |i| &rest[..i]);
        let candidates = self.by_first.iter().find(|(seg, _)| same(seg, first)).map_or(&self.wild_first, |(_, c)| c);
        candidates.iter().map(|&i| (i as usize, &self.routes[i as usize])).find(|(_, r)| r.matches(path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Byte-slice equality as a plain loop: path segments are a few bytes, shorter than a call to
/// `memcmp` (what `==` on slices becomes) pays for.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The candidate lists of [`RouteTable`]: for each literal first segment, the routes that
/// spell it plus the wildcard-first ones (a path with that first segment can match only
/// these); and the wildcard-first routes alone.
fn index_by_first(routes: &[Route]) -> (Vec<Bucket>, Box<[u32]>) {
    fn first(r: &Route) -> Option<&[u8]> {
        match r.segments.first() {
            Some(Segment::Literal(l)) => Some(l.as_bytes()),
            _ => None,
        }
    }
    let wild: Box<[u32]> = (0..routes.len()).filter(|&i| first(&routes[i]).is_none()).map(|i| i as u32).collect();
    let mut by_first: Vec<Bucket> = Vec::new();
    for seg in routes.iter().filter_map(first) {
        if by_first.iter().any(|(s, _)| **s == *seg) {
            continue;
        }
        let list = (0..routes.len()).filter(|&i| first(&routes[i]).is_none_or(|f| f == seg)).map(|i| i as u32);
        by_first.push((seg.into(), list.collect()));
    }
    (by_first, wild)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RouteTable {
        /// The walk the index stands in for: every route in order, matched as before.
        fn find_linear(&self, path: &str) -> Option<usize> {
            self.routes.iter().position(|r| r.matches_split(path))
        }
    }

    impl Route {
        /// The matching [`Route::matches`] replaced: split the path at each `/` and compare
        /// segment by segment.
        fn matches_split(&self, path: &str) -> bool {
            let Some(rest) = path.strip_prefix('/') else { return false };
            let mut parts = rest.as_bytes().split(|&c| c == b'/');
            for seg in &self.segments {
                match seg {
                    Segment::Rest => return true,
                    Segment::One => match parts.next() {
                        Some(p) if !p.is_empty() => {}
                        _ => return false,
                    },
                    Segment::Literal(l) => match parts.next() {
                        Some(p) if p == l.as_bytes() => {}
                        _ => return false,
                    },
                }
            }
            parts.next().is_none()
        }
    }

    fn r(p: &str) -> Route {
        Route::new(p, Target::ByModel, None).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(r("/v1/*").matches("/v1/chat/completions"));
        assert!(r("/v1/*").matches("/v1/models"));
        assert!(!r("/v1/*").matches("/v2/models"));
        assert!(r("/mcp").matches("/mcp"));
        assert!(!r("/mcp").matches("/mcp/x"));
        assert!(r("/a/*/b").matches("/a/x/b"));
        assert!(!r("/a/*/b").matches("/a/x/y/b"));
        assert!(r("/tools/**").matches("/tools/a/b/c"));
        assert!(Route::new("v1", Target::ByModel, None).is_err());
        assert!(Route::new("/a/**/b", Target::ByModel, None).is_err());
        assert!(Route::new("/a/x*", Target::ByModel, None).is_err());
    }

    #[test]
    fn longest_match_wins() {
        let t = RouteTable::new(vec![r("/v1/*"), Route::new("/v1/embeddings", Target::Provider(1), None).unwrap()]);
        assert_eq!(t.find("/v1/embeddings").unwrap().target, Target::Provider(1));
        assert_eq!(t.find("/v1/chat/completions").unwrap().target, Target::ByModel);
        assert!(t.find("/other").is_none());
    }

    /// The index picks exactly the route the walk over every route picks, for tables drawn
    /// from a varied pool of patterns (in varied orders: ties keep the configured order) and
    /// paths that hit, miss and straddle them.
    #[test]
    fn index_picks_what_the_walk_picks() {
        let pool = [
            "/",
            "/*",
            "/**",
            "/*/*",
            "/*/*/*",
            "/*/models",
            "/*/x/**",
            "/v1",
            "/v1/*",
            "/v1/**",
            "/v1/*/completions",
            "/v1/chat/completions",
            "/v1/models",
            "/v1/models/*",
            "/v2/rerank",
            "/tokenize",
            "/a",
            "/a/**",
            "/a/*/b",
            "/a/b/c",
            "/mcp",
            "/mcp/*",
            "/x/*",
            "/x",
        ];
        let paths = [
            "",
            "v1",
            "/",
            "//",
            "//v1",
            "/v1",
            "/v1/",
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1/models",
            "/v1/models/a/b",
            "/v1/x/completions",
            "/v2",
            "/v2/rerank",
            "/tokenize",
            "/tokenize/x",
            "/a",
            "/a/",
            "/a/b",
            "/a/x/b",
            "/a/x/y/b",
            "/a/b/c",
            "/a//b",
            "/mcp",
            "/mcp/",
            "/mcp/x",
            "/x",
            "/x/y",
            "/x/y/z",
            "/q/x/r",
            "/q/models",
            "/models",
            "/é/v1",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut tables = vec![default_routes().unwrap(), RouteTable::default()];
        for _ in 0..400 {
            let mut patterns: Vec<&str> = Vec::new();
            for _ in 0..1 + next(10) {
                let p = pool[next(pool.len())];
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
            let routes = patterns.iter().enumerate().map(|(i, p)| Route::new(p, Target::Provider(i), None).unwrap());
            tables.push(RouteTable::new(routes.collect()));
        }
        for t in &tables {
            for p in paths {
                assert_eq!(t.find_indexed(p).map(|(i, _)| i), t.find_linear(p), "{p:?} in {:?}", t.routes);
            }
        }
    }

    #[test]
    fn vllm_root_endpoints_go_beside_v1() {
        let t = default_routes().unwrap();
        let tok = t.find("/tokenize").unwrap();
        assert_eq!(tok.upstream_path("/v1", "/tokenize"), "/tokenize");
        assert_eq!(tok.upstream_path("/vllm/v1", "/tokenize"), "/vllm/tokenize");
        assert_eq!(tok.upstream_path("", "/tokenize"), "/tokenize");
        assert_eq!(t.find("/v2/rerank").unwrap().upstream_path("/v1", "/v2/rerank"), "/v2/rerank");
        let v1 = t.find("/v1/rerank").unwrap();
        assert_eq!(v1.upstream_path("/v1", "/v1/rerank"), "/v1/rerank");
        assert_eq!(v1.upstream_path("/openai/v1", "/v1/rerank"), "/openai/v1/rerank");
        assert_eq!(v1.upstream_path("", "/v1/rerank"), "/v1/rerank");
        assert!(t.find("/tokenize/x").is_none());
    }
}
