//! The page: plain HTML, CSS and JavaScript embedded in the binary, with the
//! vendored graph layout (dagre, `assets/dagre.LICENSE`). The live page asks
//! the API; the static export inlines the assets and the answers for a chosen
//! set of nodes, so it opens offline from a file.

use crate::graph::graph_json;
use crate::session::{GridRequest, Session};
use crate::{ExplorerError, Result};
use base64::Engine;
use layerlens::viz::cam::CamMethod;
use serde::Serialize;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/explorer.js");
const STYLE: &str = include_str!("../assets/explorer.css");
/// @dagrejs/dagre 3.1.3 (graphlib 4.0.6 bundled), `dist/dagre.min.js` from npm.
const DAGRE_FILE: &str = include_str!("../assets/dagre.min.js");

/// dagre without its `sourceMappingURL` comment: the map is not vendored, and
/// a browser must not go looking for it.
fn dagre() -> &'static str {
    DAGRE_FILE
        .split_once("\n//# sourceMappingURL")
        .map_or(DAGRE_FILE, |(code, _)| code)
}

/// The embedded file called `name` and its content type: the only files the
/// server hands out.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "explorer.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "explorer.css" => Some((STYLE, "text/css; charset=utf-8")),
        "dagre.min.js" => Some((dagre(), "text/javascript; charset=utf-8")),
        _ => None,
    }
}

/// A CAM method as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MethodJson {
    /// What the API takes (`gradcam++`).
    pub key: &'static str,
    /// What people call it (`Grad-CAM++`).
    pub label: &'static str,
}

/// Every CAM method, for `/api/methods` and the page's menu.
pub fn methods() -> Vec<MethodJson> {
    CamMethod::ALL
        .iter()
        .map(|m| MethodJson {
            key: m.key(),
            label: m.label(),
        })
        .collect()
}

/// The page the server serves: its assets come from `/assets/`.
pub fn live_page() -> String {
    INDEX.replace(
        "<!--HEAD-->",
        "<link rel=\"stylesheet\" href=\"assets/explorer.css\">\n\
         <script src=\"assets/dagre.min.js\"></script>\n\
         <script src=\"assets/explorer.js\"></script>",
    )
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Text safe inside a `<script>` element: no `</script>` can end it early.
fn script_safe(s: &str) -> String {
    s.replace("</", "<\\/")
}

/// The same page as one self-contained file for `nodes` (names, aliases or
/// globs): every input with its predictions, and for each node and input its
/// statistics, grid (default controls), histogram and, for `(C, H, W)` nodes
/// over picture inputs, a `method` CAM. Nothing is fetched when it opens.
pub fn static_page(session: &Session, nodes: &[&str], method: CamMethod) -> Result<String> {
    let g = session.model().graph();
    let names: Vec<String> = g
        .select_named(nodes)
        .map_err(|e| ExplorerError::NotFound(e.to_string()))?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let n_inputs = session.inputs().len();
    let mut inputs = Vec::new();
    for i in 0..n_inputs {
        let input = &session.inputs()[i];
        inputs.push(serde_json::json!({
            "index": i,
            "label": input.label,
            "picture": input.picture.is_some(),
            "predictions": session.predictions(i, 5)?,
            "image": if input.picture.is_some() { Some(data_uri(&session.input_png(i)?)) } else { None },
        }));
    }
    let mut exported = serde_json::Map::new();
    for name in &names {
        let mut per_input = Vec::new();
        for i in 0..n_inputs {
            let stats = session.stats(name, i)?;
            let grid = if stats.image_shaped {
                Some(data_uri(&session.grid_png(
                    name,
                    i,
                    &GridRequest::default(),
                )?))
            } else {
                None
            };
            let cam = if session.cam_capable(name)? && session.inputs()[i].picture.is_some() {
                let c = session.cam(name, i, method)?;
                let mut v =
                    serde_json::to_value(&*c).map_err(|e| ExplorerError::Render(e.to_string()))?;
                v["image"] = data_uri(&c.png).into();
                Some(v)
            } else {
                None
            };
            per_input.push(serde_json::json!({
                "stats": stats,
                "grid": grid,
                "hist": data_uri(&session.histogram_png(name, i)?),
                "cam": cam,
            }));
        }
        exported.insert(name.clone(), per_input.into());
    }
    let data = serde_json::json!({
        "graph": graph_json(session.model()),
        "inputs": inputs,
        "methods": methods(),
        "method": method.key(),
        "exported": exported,
    });
    let data = serde_json::to_string(&data).map_err(|e| ExplorerError::Render(e.to_string()))?;
    Ok(INDEX.replace(
        "<!--HEAD-->",
        &format!(
            "<style>\n{STYLE}\n</style>\n<script>window.LAYERLENS_STATIC = {};</script>\n<script>\n{}\n</script>\n<script>\n{}\n</script>",
            script_safe(&data),
            script_safe(dagre()),
            script_safe(SCRIPT)
        ),
    ))
}
