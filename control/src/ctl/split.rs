//! `ringmesh ctl split NODE ROUTE CLUSTER=WEIGHT...`: a route's weighted split, changed with the
//! versioned API. The route is read with the desired state's version, and written back with
//! `If-Match` on that version: a change that raced ours is refused (409) and nothing changes.

use serde_json::{Value, json};

use super::Api;
use super::api::refusal;
use super::output::{Format, Out};

/// `expect`: the version the operator reviewed (`--expect-version`); the change is made against
/// it rather than against the version read now, so that anything since is refused too.
pub(super) fn run(
    api: &Api,
    out: &Out,
    node: &str,
    route: &str,
    weights: &[String],
    expect: Option<u64>,
) -> Result<bool, String> {
    let split = parse_weights(weights)?;
    let at = format!("/v1/config/nodes/{}", segment(node));
    let v = api.get(&at).map_err(|e| format!("node `{node}`: {e}"))?;
    let read = v["version"].as_u64().ok_or("the API gave no version")?;
    let version = expect.unwrap_or(read);
    let (listener, index, mut found) = find_route(&v["value"], route)?;
    if let Some(obj) = found.as_object_mut() {
        obj.remove("cluster");
        obj.insert("split".into(), split.clone());
    }
    let path = format!("{at}/listeners/{listener}/routes/{index}");
    let answer = api.call("PUT", &path, Some(&found), Some(version))?;
    match answer.status {
        200 => {
            let now = answer.body["version"].as_u64();
            match out.format {
                Format::Json => out.json(&json!({
                    "node": node, "route": route, "split": split,
                    "from_version": version, "version": now,
                })),
                Format::Text => println!(
                    "{node} {route}: split {} (version {version} -> {})",
                    weights.join(" "),
                    now.map_or("?".into(), |n| n.to_string())
                ),
            }
            Ok(true)
        }
        409 => Err(format!(
            "refused: the desired state changed since version {version} was read (now {}); nothing was changed, read it again",
            answer.body["version"]
        )),
        _ => Err(refusal(&path, &answer)),
    }
}

/// `a=90 b=10` as `[{cluster: a, weight: 90}, ...]`.
fn parse_weights(weights: &[String]) -> Result<Value, String> {
    let mut out = Vec::new();
    for w in weights {
        let (cluster, weight) = w
            .split_once('=')
            .ok_or_else(|| format!("`{w}`: CLUSTER=WEIGHT"))?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| format!("`{w}`: the weight is a whole number"))?;
        if cluster.is_empty() {
            return Err(format!("`{w}`: no cluster"));
        }
        if out.iter().any(|e: &Value| e["cluster"] == cluster) {
            return Err(format!("`{cluster}` is given twice"));
        }
        out.push(json!({ "cluster": cluster, "weight": weight }));
    }
    if out.iter().all(|e| e["weight"] == 0) {
        return Err("every weight is zero: the route would take no traffic".into());
    }
    Ok(Value::Array(out))
}

/// The route named `name` in a node's config: (listener index, route index, the route).
fn find_route(node: &Value, name: &str) -> Result<(usize, usize, Value), String> {
    let mut found = Vec::new();
    for (li, l) in node["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (ri, r) in l["routes"].as_array().into_iter().flatten().enumerate() {
            if r["name"].as_str() == Some(name) {
                found.push((li, ri, r.clone()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "the node has no route named `{name}` (a route is named by its `name` field)"
        )),
        n => Err(format!("{n} routes are named `{name}`: rename one")),
    }
}

/// A JSON pointer segment (`~` and `/` escaped), then made safe for a URL path.
fn segment(s: &str) -> String {
    crate::http::percent_encode(&s.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_routes_are_read_strictly() {
        let w = |s: &[&str]| parse_weights(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(
            w(&["a=90", "b=10"]).unwrap(),
            json!([{"cluster": "a", "weight": 90}, {"cluster": "b", "weight": 10}])
        );
        assert!(w(&["a"]).is_err());
        assert!(w(&["a=x"]).is_err());
        assert!(w(&["a=1", "a=2"]).is_err());
        assert!(w(&["a=0", "b=0"]).is_err());
        let node = json!({"listeners": [
            {"routes": [{"name": "web"}, {"name": "api"}]},
            {"routes": [{"name": "api2"}]}]});
        assert_eq!(
            find_route(&node, "api").unwrap().0..find_route(&node, "api").unwrap().1,
            0..1
        );
        assert_eq!(find_route(&node, "api2").unwrap().0, 1);
        assert!(find_route(&node, "nope").is_err());
        assert_eq!(segment("edge/1~x"), "edge~11~0x");
        assert_eq!(segment("a b"), "a%20b");
    }
}
