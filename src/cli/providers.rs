//! `addprovider` and `removeprovider`: the `HAProviders` section edited like every other verb
//! (in place, checked by the library's reader, atomic), starting from an empty or missing file.

use super::{bad, parse, Edit, VerbResult};
use crate::config::{self, HaConfig};
use crate::provider::{Connected, Provider};
use std::path::Path;
use std::time::Instant;

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
    let edited = String::from_utf8_lossy(e.conf.bytes()).into_owned();
    if let Ok(cfg) = config::parse_str(&edited, e.conf.path()) {
        if let Some(first) = shares_an_instance(&cfg, n) {
            return Err(bad(format!(
                "addprovider: {library} handed Provider{n:02} the module instance of \
                 Provider{first:02} (this module keeps one instance per process), so this \
                 provider's -env would not take effect and its tokens would not be seen. Give \
                 this provider a private copy of the library, e.g. cp {library} \
                 /usr/local/lib/p11ha/provider{n:02}.so, and add that path instead"
            )));
        }
    }
    e.save()?;
    Ok(vec![format!("        Provider{n:02} added: {library}.")])
}

/// The provider that provider `new` would share its module instance with. A module such as
/// SoftHSM keeps one instance per process, so a second provider on the same file (or a link to
/// it) gets the first one's instance and its Env is ignored, while p11-kit-client makes a new
/// instance for each: only connecting them side by side, as the library does, tells which.
fn shares_an_instance(cfg: &HaConfig, new: u32) -> Option<u32> {
    let file = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mine = cfg.providers.iter().find(|p| p.index == new)?;
    let others: Vec<_> = cfg
        .providers
        .iter()
        .filter(|p| p.index != new && file(&p.library) == file(&mine.library))
        .collect();
    if others.is_empty() {
        return None;
    }
    let deadline = Instant::now() + cfg.connect_timeout;
    let connect = |p| match Provider::new(p, cfg.receive_timeout).connect(deadline) {
        Ok(Connected::Ready(inst)) => Some(inst),
        _ => None,
    };
    let opened: Vec<_> = others
        .iter()
        .filter_map(|p| connect(p).map(|inst| (p.index, inst)))
        .collect();
    let shared = connect(mine).and_then(|inst| {
        let first = opened
            .iter()
            .find(|(_, o)| o.same_module(&inst))
            .map(|(i, _)| *i);
        inst.retire(cfg.connect_timeout);
        first
    });
    for (_, inst) in opened {
        inst.retire(cfg.connect_timeout);
    }
    shared
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
