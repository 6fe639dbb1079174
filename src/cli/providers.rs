//! `addprovider` and `removeprovider`: the `HAProviders` section edited like every other verb
//! (in place, checked by the library's reader, atomic), starting from an empty or missing file.

use super::{bad, parse, Edit, VerbResult};
use std::path::Path;

fn key(n: u32, what: &str) -> String {
    format!("Provider{n:02}{what}")
}

/// `addprovider -library L [-env NAME=VALUE]...`: the next free ProviderNN.
pub fn addprovider(args: &[String]) -> VerbResult {
    let o = parse("addprovider", args)?;
    let library = o.need("library")?;
    if !Path::new(library).is_absolute() {
        return Err(bad(format!(
            "addprovider: -library {library}: give an absolute path"
        )));
    }
    let env = o.values("env");
    for item in &env {
        let ok = item.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !ok || item.contains(',') {
            return Err(bad(format!(
                "addprovider: -env {item:?}: expected NAME=VALUE (no ',')"
            )));
        }
    }
    let mut e = Edit::open_or_new()?;
    if let Some(p) = e
        .cfg
        .providers
        .iter()
        .find(|p| p.library == Path::new(library) && env.is_empty() && p.env.is_empty())
    {
        return Err(bad(format!(
            "addprovider: Provider{:02} has this library already",
            p.index
        )));
    }
    let n = (0..100)
        .find(|n| !e.cfg.providers.iter().any(|p| p.index == *n))
        .ok_or_else(|| bad("addprovider: no free provider number"))?;
    e.set("HAProviders", &key(n, "Library"), library)?;
    if !env.is_empty() {
        e.set("HAProviders", &key(n, "Env"), &env.join(", "))?;
    }
    e.save()?;
    Ok(vec![format!("        Provider{n:02} added: {library}.")])
}

/// `removeprovider -library L`.
pub fn removeprovider(args: &[String]) -> VerbResult {
    let o = parse("removeprovider", args)?;
    let library = o.need("library")?;
    let mut e = Edit::open()?;
    let found: Vec<u32> = e
        .cfg
        .providers
        .iter()
        .filter(|p| p.library == Path::new(library))
        .map(|p| p.index)
        .collect();
    let n = match found.as_slice() {
        [n] => *n,
        [] => {
            return Err(bad(format!(
                "removeprovider: no provider has library {library}"
            )))
        }
        _ => {
            return Err(bad(format!(
                "removeprovider: {} providers have library {library}; edit HAProviders by hand",
                found.len()
            )))
        }
    };
    e.remove("HAProviders", &key(n, "Library"))?;
    e.remove("HAProviders", &key(n, "Env"))?;
    e.save()?;
    Ok(vec![format!("        Provider{n:02} removed: {library}.")])
}
