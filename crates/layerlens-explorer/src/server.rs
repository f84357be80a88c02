//! The HTTP server: the page, its assets, and the JSON + PNG API
//! (docs/explorer.md), on a few threads so that one slow CAM does not hold up
//! the rest. Binds loopback only unless told otherwise.

use crate::graph::graph_json;
use crate::page;
use crate::session::{GridRequest, Session};
use crate::{ExplorerError, Result};
use layerlens::viz::cam::CamMethod;
use layerlens::viz::{Colormap, Norm};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tiny_http::{Header, Request, Response, Server};

/// Threads answering requests.
const WORKERS: usize = 4;

/// A bound, not yet serving, explorer.
pub struct Explorer {
    server: Arc<Server>,
    session: Arc<Session>,
    graph: Arc<String>,
}

/// Refuses a non-loopback address unless `allow_remote`: the explorer has no
/// authentication and serves the model's activations. (Checked by [`bind`];
/// callers may check first, before loading a model.)
pub fn check_bind(addr: SocketAddr, allow_remote: bool) -> Result<()> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ExplorerError::Input(format!(
            "refusing to bind {}: the explorer has no authentication, so it listens on loopback only (127.0.0.1); pass --allow-remote to serve {} anyway",
            addr.ip(),
            addr.ip()
        )));
    }
    Ok(())
}

/// Binds `addr` (see [`check_bind`]); port 0 picks a free port.
pub fn bind(session: Session, addr: SocketAddr, allow_remote: bool) -> Result<Explorer> {
    check_bind(addr, allow_remote)?;
    let server = Server::http(addr).map_err(|e| {
        ExplorerError::Io(std::io::Error::other(format!("cannot bind {addr}: {e}")))
    })?;
    let graph = serde_json::to_string(&graph_json(session.model()))
        .map_err(|e| ExplorerError::Render(e.to_string()))?;
    Ok(Explorer {
        server: Arc::new(server),
        session: Arc::new(session),
        graph: Arc::new(graph),
    })
}

impl Explorer {
    /// The address actually bound (the port chosen when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.server
            .server_addr()
            .to_ip()
            .unwrap_or_else(|| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0))
    }

    /// Serves until the process ends.
    pub fn serve(self) {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (server, session, graph) = (
                    self.server.clone(),
                    self.session.clone(),
                    self.graph.clone(),
                );
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        handle(request, &session, &graph);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// `%XX` and `+` decoded; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's path (decoded) and query parameters.
struct Route {
    path: String,
    query: HashMap<String, String>,
}

fn route(url: &str) -> Result<Route> {
    let (raw_path, raw_query) = url.split_once('?').unwrap_or((url, ""));
    let path = percent_decode(raw_path);
    // Checked after decoding, so `%2e%2e%2f` is caught too.
    if path.split(['/', '\\']).any(|seg| seg == "..") || path.contains('\0') {
        return Err(ExplorerError::Traversal(path));
    }
    let query = raw_query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Route { path, query })
}

impl Route {
    fn param(&self, key: &str) -> Result<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| ExplorerError::Input(format!("missing query parameter '{key}'")))
    }

    fn input(&self) -> Result<usize> {
        match self.query.get("input") {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| ExplorerError::Input(format!("input must be an index, got '{v}'"))),
        }
    }

    fn grid(&self) -> Result<GridRequest> {
        let mut req = GridRequest::default();
        if let Some(c) = self.query.get("channels") {
            req.top_k = match c.as_str() {
                "all" => None,
                k => match k.parse::<usize>() {
                    Ok(k) if (1..=4096).contains(&k) => Some(k),
                    _ => {
                        return Err(ExplorerError::Input(format!(
                            "channels must be 'all' or 1..4096, got '{k}'"
                        )))
                    }
                },
            };
        }
        if let Some(n) = self.query.get("norm") {
            req.norm = parse_norm(n)?;
        }
        if let Some(c) = self.query.get("cmap") {
            req.colormap = match c.as_str() {
                "auto" => None,
                other => Some(Colormap::parse(other)?),
            };
        }
        Ok(req)
    }

    fn method(&self) -> Result<CamMethod> {
        Ok(match self.query.get("method") {
            None => CamMethod::GradCamPlusPlus,
            Some(m) => CamMethod::parse(m)?,
        })
    }
}

/// Parses `auto`, `shared` or `per-channel`.
pub fn parse_norm(s: &str) -> Result<Norm> {
    Ok(match s {
        "auto" => Norm::Auto,
        "shared" => Norm::Shared,
        "per-channel" | "channel" => Norm::PerChannel,
        other => {
            return Err(ExplorerError::Input(format!(
                "unknown normalisation '{other}' (auto, shared, per-channel)"
            )))
        }
    })
}

/// A response body and its content type.
struct Reply {
    body: Vec<u8>,
    content_type: &'static str,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Reply> {
    Ok(Reply {
        body: serde_json::to_vec(value).map_err(|e| ExplorerError::Render(e.to_string()))?,
        content_type: "application/json",
    })
}

fn png(bytes: &[u8]) -> Reply {
    Reply {
        body: bytes.to_vec(),
        content_type: "image/png",
    }
}

fn answer(r: &Route, session: &Session, graph: &str) -> Result<Reply> {
    match r.path.as_str() {
        "/" | "/index.html" => Ok(Reply {
            body: page::live_page().into_bytes(),
            content_type: "text/html; charset=utf-8",
        }),
        "/api/graph" => Ok(Reply {
            body: graph.as_bytes().to_vec(),
            content_type: "application/json",
        }),
        "/api/inputs" => {
            let list: Vec<serde_json::Value> = (0..session.inputs().len())
                .map(|i| -> Result<serde_json::Value> {
                    let input = &session.inputs()[i];
                    Ok(serde_json::json!({
                        "index": i,
                        "label": input.label,
                        "picture": input.picture.is_some(),
                        "predictions": session.predictions(i, 5)?,
                    }))
                })
                .collect::<Result<_>>()?;
            json(&list)
        }
        "/api/methods" => json(&page::methods()),
        "/api/stats" => json(&session.stats(r.param("node")?, r.input()?)?),
        "/api/grid.png" => Ok(png(&session.grid_png(
            r.param("node")?,
            r.input()?,
            &r.grid()?,
        )?)),
        "/api/hist.png" => Ok(png(&session.histogram_png(r.param("node")?, r.input()?)?)),
        "/api/input.png" => Ok(png(&session.input_png(r.input()?)?)),
        "/api/cam" => json(&*session.cam(r.param("node")?, r.input()?, r.method()?)?),
        "/api/cam.png" => Ok(png(&session
            .cam(r.param("node")?, r.input()?, r.method()?)?
            .png)),
        p => match p.strip_prefix("/assets/") {
            Some(name) => {
                let (body, content_type) = page::asset(name)
                    .ok_or_else(|| ExplorerError::NotFound(format!("no asset '{name}'")))?;
                Ok(Reply {
                    body: body.as_bytes().to_vec(),
                    content_type,
                })
            }
            None => Err(ExplorerError::NotFound(format!("no page '{p}'"))),
        },
    }
}

fn status_of(e: &ExplorerError) -> u16 {
    match e {
        ExplorerError::NotFound(_) => 404,
        ExplorerError::Input(_) | ExplorerError::Traversal(_) | ExplorerError::Layerlens(_) => 400,
        _ => 500,
    }
}

fn handle(request: Request, session: &Session, graph: &str) {
    let result = if *request.method() != tiny_http::Method::Get {
        Err(ExplorerError::Input(format!(
            "{} is not served: the API is read-only (GET)",
            request.method()
        )))
    } else {
        route(request.url()).and_then(|r| answer(&r, session, graph))
    };
    let response = match result {
        Ok(reply) => Response::from_data(reply.body)
            .with_header(header("Content-Type", reply.content_type))
            .with_header(header("Cache-Control", "no-store")),
        Err(e) => {
            let body = serde_json::json!({ "error": e.to_string() }).to_string();
            Response::from_data(body.into_bytes())
                .with_status_code(status_of(&e))
                .with_header(header("Content-Type", "application/json"))
        }
    };
    // The client may have gone away; nothing to do about it.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_even_when_encoded() {
        for url in [
            "/assets/../Cargo.toml",
            "/assets/%2e%2e/%2e%2e/etc/passwd",
            "/assets/..%2f..%2fsecret",
            "/assets/..\\x",
        ] {
            assert!(
                matches!(route(url), Err(ExplorerError::Traversal(_))),
                "{url}"
            );
        }
        let r = route("/api/stats?node=_blocks.15&input=1").unwrap();
        assert_eq!(
            (r.param("node").unwrap(), r.input().unwrap()),
            ("_blocks.15", 1)
        );
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }

    #[test]
    fn only_loopback_is_served_unless_asked() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let e = check_bind(any, false).unwrap_err().to_string();
        assert!(
            e.contains("refusing to bind 0.0.0.0") && e.contains("--allow-remote"),
            "{e}"
        );
        assert!(check_bind(any, true).is_ok());
        assert!(check_bind("127.0.0.1:0".parse().unwrap(), false).is_ok());
        assert!(check_bind("[::1]:0".parse().unwrap(), false).is_ok());
    }

    #[test]
    fn grid_parameters_are_checked() {
        let r = route("/api/grid.png?node=x&channels=all&norm=per-channel&cmap=viridis").unwrap();
        let g = r.grid().unwrap();
        assert_eq!(
            (g.top_k, g.norm, g.colormap),
            (None, Norm::PerChannel, Some(Colormap::Viridis))
        );
        assert!(route("/api/grid.png?channels=0").unwrap().grid().is_err());
        assert!(route("/api/grid.png?norm=x").unwrap().grid().is_err());
        assert!(route("/api/grid.png?input=-1").unwrap().input().is_err());
    }
}
