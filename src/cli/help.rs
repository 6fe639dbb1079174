//! The verbs' one description: the options each accepts (what [`super::opts`] parses against),
//! the `-help` text with examples, and the man page built from the same text. Also the front of
//! the command line: `hagroup` before a verb, verbs in any case, `--help`, `--version`, and
//! "did you mean" for a mistyped verb.

use super::opts::{flag, repeated, value, OptSpec, Opts, Parsed};
use super::{bad, CliError};

/// One verb as `-help` and the man page show it.
pub struct Verb {
    pub name: &'static str,
    pub summary: &'static str,
    pub options: &'static [OptSpec],
    pub examples: &'static [&'static str],
}

const PIN: &str = "the group's user PIN (else P11HA_PIN, else asked on the terminal without echo)";

/// Every verb, in the order `--help` lists them.
pub const VERBS: &[Verb] = &[
    Verb {
        name: "listgroups",
        summary: "Show every HA group, its settings and each member's live state (the library is \
                  initialized in this process; nothing is written).",
        options: &[
            flag("json", "one JSON document on stdout instead of the text"),
            flag("check", "exit 3 when a group has a member down"),
        ],
        examples: &["p11ha listgroups", "p11ha listgroups -json -check"],
    },
    Verb {
        name: "creategroup",
        summary: "Create a group with one first member. The token must be found in a provider \
                  and accept the PIN; the group serial is written to the file so that it never \
                  changes when members change.",
        options: &[
            value("label", "<label>", "the group's label (its virtual token's label)"),
            value("serialnumber", "<serial>", "the first member's token serial"),
            value("groupserial", "<serial>", "the group serial (default: 1 followed by the first member's serial)"),
            value("password", "<pin>", PIN),
        ],
        examples: &["p11ha creategroup -label payments -serialnumber 1234567 -password userpin"],
    },
    Verb {
        name: "deletegroup",
        summary: "Delete a group with its HASynchronize and HARecovery entries.",
        options: &[value("label", "<label>", "the group's label")],
        examples: &["p11ha deletegroup -label payments"],
    },
    Verb {
        name: "addmember",
        summary: "Add an active member. The token must be found in a provider, be of the \
                  group's authentication kind and accept the group's PIN (checked on a \
                  reachable member too).",
        options: &[
            value("group", "<label>", "the group's label"),
            value("serialnumber", "<serial>", "the token serial"),
            value("password", "<pin>", PIN),
        ],
        examples: &["p11ha addmember -group payments -serialnumber 7654321", "P11HA_PIN=userpin p11ha hagroup addMember -g payments -se 7654321"],
    },
    Verb {
        name: "removemember",
        summary: "Remove an active member (the group serial does not change).",
        options: &[
            value("group", "<label>", "the group's label"),
            value("serialnumber", "<serial>", "the token serial"),
        ],
        examples: &["p11ha removemember -group payments -serialnumber 7654321"],
    },
    Verb {
        name: "addstandby",
        summary: "Add a standby member (used only when no active member is left); checked like addmember.",
        options: &[
            value("group", "<label>", "the group's label"),
            value("serialnumber", "<serial>", "the token serial"),
            value("password", "<pin>", PIN),
        ],
        examples: &["p11ha addstandby -group payments -serialnumber 7654321"],
    },
    Verb {
        name: "removestandby",
        summary: "Remove a standby member.",
        options: &[
            value("group", "<label>", "the group's label"),
            value("serialnumber", "<serial>", "the token serial"),
        ],
        examples: &["p11ha removestandby -group payments -serialnumber 7654321"],
    },
    Verb {
        name: "addprovider",
        summary: "Add a provider (a PKCS#11 library whose tokens may be members); the file may \
                  be empty or missing.",
        options: &[
            value("library", "<path>", "the module's path"),
            repeated("env", "<NAME=VALUE>", "set while p11ha calls into the module; may repeat"),
        ],
        examples: &["p11ha addprovider -library /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so -env P11_KIT_SERVER_ADDRESS=unix:path=/run/hsm1.sock"],
    },
    Verb {
        name: "removeprovider",
        summary: "Remove the provider with this library path.",
        options: &[value("library", "<path>", "the module's path as configured")],
        examples: &["p11ha removeprovider -library /usr/lib/softhsm/libsofthsm2.so"],
    },
    Verb {
        name: "synchronize",
        summary: "Copy every token object to every member that lacks it; with -init-cloning-key, \
                  create the group cloning key (SO PIN from P11HA_SO_PIN).",
        options: &[
            value("group", "<label>", "the group's label"),
            flag("init-cloning-key", "create the group cloning key on every member"),
            flag("show-owed", "list what members that were down are still owed"),
            flag("prune", "drop owed records of members no longer configured"),
            flag("check", "say which mechanisms each member can receive keys by"),
            flag("enable", "turn HASynchronize on for the group (no PIN needed)"),
            flag("disable", "turn HASynchronize off for the group (no PIN needed)"),
        ],
        examples: &[
            "P11HA_PIN=userpin p11ha synchronize -group payments",
            "p11ha synchronize -group payments -enable",
        ],
    },
    Verb {
        name: "recover",
        summary: "Ask every application using the group to try its dropped members now, even \
                  after auto-recovery gave up (increments HARecovery.<label>).",
        options: &[value("group", "<label>", "the group's label")],
        examples: &["p11ha recover -group payments"],
    },
    Verb {
        name: "retry",
        summary: "Set the auto-recovery attempts (reconnAtt): 0 off, -1 unlimited.",
        options: &[value("count", "<n>", "attempts, -1..=1000000")],
        examples: &["p11ha retry -count -1"],
    },
    Verb {
        name: "interval",
        summary: "Set the seconds between auto-recovery attempts (AutoReconnectInterval).",
        options: &[value("interval", "<seconds>", "1..=3600")],
        examples: &["p11ha interval -interval 60"],
    },
    Verb {
        name: "recoverymode",
        summary: "Set VirtualTokenActiveRecovery.",
        options: &[value("mode", "<mode>", "activeBasic or activeEnhanced")],
        examples: &["p11ha recoverymode -mode activeEnhanced"],
    },
    Verb {
        name: "haonly",
        summary: "Show only the virtual HA slots to applications (HAOnly), or not.",
        options: &[flag("enable", "HAOnly = 1"), flag("disable", "HAOnly = 0"), flag("show", "print the setting")],
        examples: &["p11ha haonly -enable"],
    },
    Verb {
        name: "halog",
        summary: "Configure the HA log (haErrorLog.txt): directory, maximum size, on or off.",
        options: &[
            value("path", "<dir>", "an existing directory"),
            value("maxlength", "<bytes>", "rotate when the file would grow past this"),
            flag("enable", "haLogStatus = enabled"),
            flag("disable", "haLogStatus = disabled"),
            flag("show", "print the settings"),
            flag("follow", "print new records of haErrorLog.txt as they are written, until interrupted"),
        ],
        examples: &["p11ha halog -path /var/log/p11ha -enable", "p11ha halog -show"],
    },
    Verb {
        name: "audit",
        summary: "The HA groups' audit trail (docs/AUDIT.md): audit show | follow | clear | verify \
                  [FILES...] | init-key. The subcommand and files are positional; verify and \
                  init-key need the user PIN in P11HA_PIN.",
        options: &[
            value("group", "<label>", "the HA group (default: the only one)"),
            value("since", "<UTC time>", "show: records from this time"),
            value("until", "<UTC time>", "show: records up to this time (the whole day/minute/second)"),
            value("session", "<cid>", "show: one correlation id (8 hex digits)"),
            value("member", "<serial>", "show: records involving this member"),
            flag("json", "show, follow: one JSON object per record"),
        ],
        examples: &[
            "p11ha audit show -since 2026-07-14 -session 5f3e9a01",
            "P11HA_PIN=... p11ha audit verify",
            "p11ha audit follow",
        ],
    },
];

const EXIT: &str = "Exit status: 0 success; 1 the command failed; 2 bad arguments; 3 listgroups \
                    -check found a group with a member down. The CK_RV is printed as \
                    \"Command Result\" (text) or in the \"error\" object (-json).";

/// The verb a word names (any case), if any.
pub fn find(word: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(word))
}

fn usage_line(v: &Verb) -> String {
    let mut s = format!("p11ha {}", v.name);
    for o in v.options {
        match o.value {
            Some(p) => s.push_str(&format!(" -{} {p}", o.name)),
            None => s.push_str(&format!(" [-{}]", o.name)),
        }
    }
    s
}

/// `p11ha <verb> -help`.
pub fn verb_help(v: &Verb) -> String {
    let mut s = format!("usage: {}\n\n{}\n", usage_line(v), v.summary);
    if !v.options.is_empty() {
        s.push_str("\noptions (any unique prefix, any case):\n");
        for o in v.options {
            let name = match o.value {
                Some(p) => format!("-{} {p}", o.name),
                None => format!("-{}", o.name),
            };
            s.push_str(&format!("  {name:<26} {}\n", o.help));
        }
    }
    s.push_str("\nexamples:\n");
    for e in v.examples {
        s.push_str(&format!("  {e}\n"));
    }
    s
}

/// `p11ha --help`.
pub fn overview() -> String {
    let mut s = String::from(
        "usage: p11ha [hagroup] <verb> [options]    (p11ha <verb> -help for one verb)\n\n\
         Edits and shows the p11ha configuration (P11HA_CONF, else \
         $ChrystokiConfigurationPath/Chrystoki.conf, else /etc/Chrystoki.conf).\n\nverbs:\n",
    );
    for v in VERBS {
        s.push_str(&format!("  {:<15} {}\n", v.name, first_sentence(v.summary)));
    }
    s.push_str(&format!("\n{EXIT}\n"));
    s
}

fn first_sentence(s: &str) -> &str {
    s.find(". ").map_or(s, |i| &s[..=i])
}

/// The man page (roff), from the same text as `--help`.
pub fn man_page() -> String {
    let esc = |s: &str| s.replace('\\', "\\e").replace('-', "\\-");
    let mut s = format!(
        ".TH P11HA 1 \"\" \"p11ha {}\" \"User Commands\"\n.SH NAME\np11ha \\- configure and inspect p11ha HA groups\n\
         .SH SYNOPSIS\n.B p11ha\n[hagroup] \\fIverb\\fR [\\fIoptions\\fR]\n.SH DESCRIPTION\n\
         Edits and shows the p11ha configuration (P11HA_CONF, else \
         $ChrystokiConfigurationPath/Chrystoki.conf, else /etc/Chrystoki.conf). Options may be \
         abbreviated to any unique prefix and are compared without case.\n.SH VERBS\n",
        env!("CARGO_PKG_VERSION")
    );
    for v in VERBS {
        s.push_str(&format!(
            ".TP\n.B {}\n{}\n",
            esc(&usage_line(v)),
            esc(v.summary)
        ));
        for o in v.options {
            s.push_str(&format!(".br\n\\-{}: {}\n", esc(o.name), esc(o.help)));
        }
        for e in v.examples {
            s.push_str(&format!(".br\nExample: {}\n", esc(e)));
        }
    }
    s.push_str(&format!(".SH EXIT STATUS\n{}\n", esc(EXIT)));
    s
}

/// What the command line asks for, before any verb runs.
pub enum Front {
    /// Run `verb` with `args`; `json` when the verb's output must be one JSON document.
    Run {
        verb: &'static str,
        args: Vec<String>,
        json: bool,
    },
    /// Print this and exit 0 (help, version).
    Print(String),
    /// Refused before any verb ran; `json` when `-json` was asked for all the same.
    Fail(CliError, bool),
}

fn is_help(a: &str) -> bool {
    ["-h", "-help", "--help", "help", "-?"].contains(&a.to_ascii_lowercase().as_str())
}

/// Reads the verb and answers help and version requests.
pub fn front(args: &[String]) -> Front {
    let mut args = args;
    if args
        .first()
        .is_some_and(|a| a.eq_ignore_ascii_case("hagroup"))
    {
        args = &args[1..];
    }
    let Some(word) = args.first() else {
        return Front::Fail(bad(overview()), false);
    };
    let lower = word.to_ascii_lowercase();
    if is_help(&lower) {
        return Front::Print(match args.get(1).and_then(|w| find(w)) {
            Some(v) => verb_help(v),
            None => overview(),
        });
    }
    if ["--version", "-version", "version", "-v"].contains(&lower.as_str()) {
        return Front::Print(format!("p11ha {}\n", env!("CARGO_PKG_VERSION")));
    }
    if lower == "--man" {
        return Front::Print(man_page());
    }
    let Some(v) = find(word) else {
        let hint = super::opts::suggest(word, VERBS.iter().map(|v| v.name))
            .map(|s| format!("; did you mean {s}?"))
            .unwrap_or_default();
        return Front::Fail(
            bad(format!(
                "unknown command {word:?}{hint} (p11ha --help lists the verbs)"
            )),
            false,
        );
    };
    let rest = args[1..].to_vec();
    if v.name == "audit" && rest.first().is_some_and(|a| !a.starts_with('-')) {
        // `audit <subcommand> [options] [FILES...]`: positional words it parses itself.
        let json = rest.iter().any(|a| a.eq_ignore_ascii_case("-json"));
        return Front::Run {
            verb: v.name,
            json,
            args: rest,
        };
    }
    match Opts::parse(v.name, v.options, &rest) {
        Ok(Parsed::Help) => Front::Print(verb_help(v)),
        Ok(Parsed::Run(o)) => Front::Run {
            verb: v.name,
            json: o.flag("json"),
            args: rest,
        },
        Err(e) => {
            let json = rest.iter().any(|a| a.eq_ignore_ascii_case("-json"));
            Front::Fail(e, json)
        }
    }
}

/// The options of `verb` as its table entry declares them (help was answered by [`front`]).
pub fn parse(verb: &'static str, args: &[String]) -> Result<Opts, CliError> {
    let v = find(verb).ok_or_else(|| bad(format!("{verb}: not a verb")))?;
    match Opts::parse(v.name, v.options, args)? {
        Parsed::Run(o) => Ok(o),
        Parsed::Help => Err(bad(verb_help(v))),
    }
}
