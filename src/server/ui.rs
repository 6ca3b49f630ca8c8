//! The web view (`GET /ui`, `GET /ui/streams/{s}`, `GET /ui/assets/{file}`): pages and assets
//! built into the binary, served as they are.
//!
//! The pages hold no data: their scripts read it from the JSON API and the SSE feed, sending the
//! key the viewer typed (`Authorization: Bearer`) like any other client. So the pages and assets
//! need no key, and the data routes keep their scopes. The one thing a page learns from the
//! server is whether it must ask for a key (`data-auth` on its `<html>`).
//!
//! Every response forbids what the view never needs: scripts, styles, images and requests from
//! any other origin or inline (`Content-Security-Policy`), being framed, and content sniffing.
//! The files live in `src/server/ui/` (docs/ui.md describes what they draw).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::wire::{ApiError, Body, ErrorCode};

/// What the view may load: its own origin only, nothing inline, no frames around it.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The assets are not versioned by name: the browser revalidates them, so a new binary's view
/// is the one shown after a reload.
const CACHE: &str = "no-cache";
/// The placeholder in a page that says whether the server asks for keys.
const AUTH_PLACEHOLDER: &str = "{{auth}}";

/// A page of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Page {
    /// The streams with their stats.
    Streams,
    /// One stream, live, beside its context window.
    Stream,
}

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// The files `GET /ui/assets/{file}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("ui/ui.css"),
    },
    Asset {
        name: "common.js",
        content_type: JS,
        bytes: include_bytes!("ui/common.js"),
    },
    Asset {
        name: "feed.js",
        content_type: JS,
        bytes: include_bytes!("ui/feed.js"),
    },
    Asset {
        name: "streams.js",
        content_type: JS,
        bytes: include_bytes!("ui/streams.js"),
    },
    Asset {
        name: "stream.js",
        content_type: JS,
        bytes: include_bytes!("ui/stream.js"),
    },
    Asset {
        name: "receipt.js",
        content_type: JS,
        bytes: include_bytes!("ui/receipt.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("ui/icon.svg"),
    },
];

/// A page, telling its script whether the server asks for keys.
pub(super) fn page(page: Page, keys: bool) -> Response<Body> {
    let html = match page {
        Page::Streams => include_str!("ui/streams.html"),
        Page::Stream => include_str!("ui/stream.html"),
    };
    let html = html.replace(AUTH_PLACEHOLDER, if keys { "keys" } else { "open" });
    respond("text/html; charset=utf-8", Bytes::from(html))
}

/// The names of the web view's assets.
pub(crate) fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|asset| asset.name)
}

/// `GET /ui/assets/{file}`: an asset by file name, or 404.
pub(super) fn asset(name: &str) -> Result<Response<Body>, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("the web view has no asset {name:?}"),
            )
        })?;
    Ok(respond(asset.content_type, Bytes::from_static(asset.bytes)))
}

fn respond(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_say_whether_keys_are_asked_for() {
        for (keys, auth) in [(true, "data-auth=\"keys\""), (false, "data-auth=\"open\"")] {
            for page in [Page::Streams, Page::Stream] {
                let html = match page {
                    Page::Streams => include_str!("ui/streams.html"),
                    Page::Stream => include_str!("ui/stream.html"),
                };
                assert!(html.contains(AUTH_PLACEHOLDER), "{page:?}");
                let response = super::page(page, keys);
                assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
                let Body::Full(Some(body)) = response.into_body() else {
                    panic!("a page is one buffer");
                };
                let body = std::str::from_utf8(&body).unwrap();
                assert!(body.contains(auth), "{page:?} {keys}");
            }
        }
    }

    #[test]
    fn pages_load_only_assets_that_exist() {
        // Every `/ui/assets/...` a page or style sheet names is served (no 404 in the console).
        let sources = [
            include_str!("ui/streams.html"),
            include_str!("ui/stream.html"),
            include_str!("ui/ui.css"),
        ];
        for source in sources {
            for reference in source.split("/ui/assets/").skip(1) {
                let name: String = reference
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(asset(&name).is_ok(), "{name} is referenced but not served");
            }
        }
        assert_eq!(
            asset("nope.js").unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn scripts_import_only_embedded_modules() {
        for asset in ASSETS.iter().filter(|asset| asset.content_type == JS) {
            let source = std::str::from_utf8(asset.bytes).unwrap();
            for import in source.split(" from \"./").skip(1) {
                let module = import.split('"').next().unwrap_or_default();
                assert!(
                    super::asset(module).is_ok(),
                    "{} imports {module}",
                    asset.name
                );
            }
        }
    }
}
