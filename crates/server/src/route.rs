//! The scoring server's routes, decided once per request from its method and path.

use std::borrow::Cow;

use crate::error::ApiError;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /v2`
    ServerMetadata,
    /// `GET /v2/health/live`
    Live,
    /// `GET /v2/health/ready`
    ServerReady,
    /// `GET /metrics`
    Metrics,
    /// `GET /swagger.json`: the OpenAPI document of the models served.
    Swagger,
    /// `POST /score`: the only model served.
    ScoreOnly,
    /// A route of one model, `version` `None` meaning its latest.
    Model { name: Cow<'a, str>, version: Option<Cow<'a, str>>, action: ModelAction },
}

/// What a model route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAction {
    /// `GET /v2/models/{name}[/versions/{version}]`
    Metadata,
    /// `GET .../ready`
    Ready,
    /// `POST .../infer`
    Infer,
    /// `POST /models/{name}[/versions/{version}]/score`
    Score,
}

impl ModelAction {
    fn method(self) -> &'static str {
        match self {
            ModelAction::Metadata | ModelAction::Ready => "GET",
            ModelAction::Infer | ModelAction::Score => "POST",
        }
    }
}

/// Decides the route of `method` and `path` (without its query). An unknown path is a 404 and a
/// known one asked with another method a 405 naming the method it takes; names in the path are
/// percent-decoded.
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, ApiError> {
    let (route, allowed) = match path {
        "/v2" => (Route::ServerMetadata, "GET"),
        "/v2/health/live" => (Route::Live, "GET"),
        "/v2/health/ready" => (Route::ServerReady, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        "/swagger.json" => (Route::Swagger, "GET"),
        "/score" => (Route::ScoreOnly, "POST"),
        _ => match model_route(path)? {
            Some((route, action)) => (route, action.method()),
            None => return Err(ApiError::NotFound(format!("no route for {path}"))),
        },
    };
    // HEAD is GET without the body.
    let method = if method == "HEAD" { "GET" } else { method };
    if method != allowed {
        return Err(ApiError::MethodNotAllowed { method: method.to_owned(), allowed });
    }
    Ok(route)
}

/// `/v2/models/{name}[/versions/{version}][/ready|/infer]` or
/// `/models/{name}[/versions/{version}]/score`; `None` for any other path.
fn model_route(path: &str) -> Result<Option<(Route<'_>, ModelAction)>, ApiError> {
    let (rest, v2) = match (path.strip_prefix("/v2/models/"), path.strip_prefix("/models/")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => return Ok(None),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (name, version, tail) = match segments.as_slice() {
        [name, "versions", version, tail @ ..] => (*name, Some(*version), tail),
        [name, tail @ ..] => (*name, None, tail),
        [] => return Ok(None),
    };
    let action = match (v2, tail) {
        (true, []) => ModelAction::Metadata,
        (true, ["ready"]) => ModelAction::Ready,
        (true, ["infer"]) => ModelAction::Infer,
        (false, ["score"]) => ModelAction::Score,
        _ => return Ok(None),
    };
    if name.is_empty() || version.is_some_and(str::is_empty) {
        return Ok(None);
    }
    let route = Route::Model { name: decode(name)?, version: version.map(decode).transpose()?, action };
    Ok(Some((route, action)))
}

/// Percent-decodes one path segment; borrowed when there is nothing to decode.
fn decode(segment: &str) -> Result<Cow<'_, str>, ApiError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bad = || ApiError::bad_request(format!("invalid percent-encoding in path segment '{segment}'"));
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model<'a>(name: &'a str, version: Option<&'a str>, action: ModelAction) -> Route<'a> {
        Route::Model { name: name.into(), version: version.map(Into::into), action }
    }

    #[test]
    fn every_route_is_decided_once() {
        let ok = |m, p| route(m, p).expect(p);
        assert_eq!(ok("GET", "/v2"), Route::ServerMetadata);
        assert_eq!(ok("HEAD", "/v2/health/live"), Route::Live);
        assert_eq!(ok("GET", "/v2/health/ready"), Route::ServerReady);
        assert_eq!(ok("GET", "/metrics"), Route::Metrics);
        assert_eq!(ok("GET", "/swagger.json"), Route::Swagger);
        assert_eq!(ok("POST", "/score"), Route::ScoreOnly);
        assert_eq!(ok("GET", "/v2/models/m"), model("m", None, ModelAction::Metadata));
        assert_eq!(ok("GET", "/v2/models/m/ready"), model("m", None, ModelAction::Ready));
        assert_eq!(ok("POST", "/v2/models/m/infer"), model("m", None, ModelAction::Infer));
        assert_eq!(ok("GET", "/v2/models/m/versions/2"), model("m", Some("2"), ModelAction::Metadata));
        assert_eq!(ok("GET", "/v2/models/m/versions/2/ready"), model("m", Some("2"), ModelAction::Ready));
        assert_eq!(ok("POST", "/v2/models/m/versions/2/infer"), model("m", Some("2"), ModelAction::Infer));
        assert_eq!(ok("POST", "/models/m/score"), model("m", None, ModelAction::Score));
        assert_eq!(ok("POST", "/models/m/versions/3/score"), model("m", Some("3"), ModelAction::Score));
        assert_eq!(ok("POST", "/v2/models/my%20model/infer"), model("my model", None, ModelAction::Infer));
    }

    #[test]
    fn unknown_paths_wrong_methods_and_bad_encodings_are_refused() {
        for path in
            ["/", "/v2/nope", "/v2/models/", "/v2/models/m/other", "/models/m", "/models/m/infer", "/v2/models//ready"]
        {
            assert_eq!(route("GET", path).expect_err(path).status(), 404, "{path}");
        }
        let e = route("GET", "/v2/models/m/infer").expect_err("405");
        assert_eq!(e.status(), 405);
        assert!(e.to_string().contains("POST"), "{e}");
        assert_eq!(route("POST", "/v2/health/live").expect_err("405").status(), 405);
        assert_eq!(route("GET", "/v2/models/%zz/ready").expect_err("400").status(), 400);
        assert_eq!(route("GET", "/v2/models/%ff/ready").expect_err("400").status(), 400);
    }
}
