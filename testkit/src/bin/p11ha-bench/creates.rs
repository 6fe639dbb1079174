//! Part 12: creating token objects on a synchronized group with every member up (issue 17):
//! each creation returns only once every member holds the object, so its cost next to one
//! member's creation is what synchronization costs an application.

use crate::{conf, create, fmt_ns, ha_child, p11kit_child, progress, Created, T};
use p11ha_testkit::{Cluster, ConfigOpts};
use std::path::Path;

/// The part's report, and what went wrong in it (failed creations, objects left behind).
pub fn part12(w: &Cluster, lib: &Path, n: usize) -> (String, Vec<String>) {
    progress(&format!(
        "part 12: {n} creations on a synchronized group, every member up"
    ));
    let mut wrong = Vec::new();
    let mut d = p11kit_child(w, 0);
    let direct = create(&mut d, "create-direct", n);
    let left = destroy_all(&mut d);
    drop(d);
    if left != direct.ok {
        wrong.push(format!("direct: {left} of {} objects destroyed", direct.ok));
    }

    let synced = ConfigOpts {
        ha_synchronize: Some(true),
        ..conf(&[0, 1, 2], false)
    };
    let mut c = ha_child(w, lib, "p11ha-create", &synced);
    let ha = create(&mut c, "create-ha", n);
    let destroyed = destroy_all(&mut c);
    drop(c);
    for (what, x) in [("direct", &direct), ("p11ha", &ha)] {
        if x.fails > 0 {
            wrong.push(format!(
                "{what}: {} of {n} creations failed (first {})",
                x.fails, x.first_rv
            ));
        }
    }
    // Every member must have held every object: each destroy through p11ha found its twins, and
    // no member holds a data object afterwards.
    for i in 0..3 {
        let count = p11kit_child(w, i).ask("count", "count", T);
        if count != "0" {
            wrong.push(format!(
                "m{i} holds {count} data objects after the destroys"
            ));
        }
    }
    if destroyed != ha.ok {
        wrong.push(format!("p11ha: {destroyed} of {} objects destroyed", ha.ok));
    }
    let per = |x: &Created| fmt_ns(x.ns as f64 / n as f64);
    let s = format!(
        "## 12. Creating {n} token data objects, HASynchronize on, 3 remote members all up (issue 17)\n\n\
         Direct = p11-kit-client to m0 alone; p11ha = the group, each creation replicated to the 2 other \
         members before it returns. One object after the other, one thread. CPU = CPU time (user + \
         sys) of the application process per creation.\n\n\
         | | direct | p11ha | p11ha ÷ direct (time) | target | CPU ÷ direct |\n|---|---|---|---|---|---|\n\
         | create {n} data objects | {} ({} each, CPU {}) | {} ({} each, CPU {}) | ×{:.2} | ≤ 1.5 | ×{:.2} |\n",
        fmt_ns(direct.ns as f64),
        per(&direct),
        fmt_ns(direct.cpu_each()),
        fmt_ns(ha.ns as f64),
        per(&ha),
        fmt_ns(ha.cpu_each()),
        ha.ns as f64 / direct.ns as f64,
        ha.cpu_each() / direct.cpu_each(),
    );
    (s, wrong)
}

/// Destroys every data object the child sees; how many went.
fn destroy_all(c: &mut crate::ChildProc) -> u64 {
    c.ask("destroy", "destroyed", crate::bulk_timeout(10_000))
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}
