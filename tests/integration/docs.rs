//! The README and `docs/` stay true: the generated API reference matches the CRDs, every relative link and anchor
//! resolves, every ```console block runs against the test control plane with a real operator, and every ```sh
//! block is checked as far as it can be without the cluster it names (the convention: docs/testing.md, "Commands
//! in the docs").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, identity, operator};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, every page under docs/, and the chart's README.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.insert(0, root().join("README.md"));
    pages.push(root().join("charts/keyward/README.md"));
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// A fenced code block: its language, its text and the line of its opening fence.
struct Block {
    lang: String,
    text: String,
    line: usize,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                let lang = line.trim_start().trim_start_matches('`').trim().to_string();
                open = Some(Block { lang, text: String::new(), line: i + 1 });
            }
            (Some(_), true) => out.extend(open.take()),
            (Some(b), false) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, false) => {}
        }
    }
    out
}

/// The lines outside code blocks, with their numbers, inline code spans removed.
fn prose(md: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut text = String::new();
            for (n, part) in line.split('`').enumerate() {
                if n % 2 == 0 {
                    text.push_str(part);
                }
            }
            out.push((i + 1, text));
        }
    }
    out
}

/// The targets of Markdown links `[text](target)` outside code.
fn links(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(md) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push((n, rest[..end].trim().to_string()));
            rest = &rest[end..];
        }
    }
    out
}

/// GitHub's anchors for the headings of a page: lower case, punctuation but `-` and `_` dropped, spaces to `-`,
/// repeats numbered.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !fenced) else { continue };
        let Some(title) = title.trim_start_matches('#').strip_prefix(' ') else { continue };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn the_api_reference_matches_the_crds() {
    let page = read(&root().join("docs/api.md"));
    let generated = keyward::api::reference::splice(&page).expect("docs/api.md has the generated part's markers");
    assert!(
        page == generated,
        "docs/api.md's field reference differs from the CRDs: run `cargo run -- crd --reference docs/api.md` and commit"
    );
    // Every field of both kinds is in it, down to the leaves.
    for field in
        ["`spec.rotation.gracePeriod`", "`status.usage.utilization`", "`spec.scaling.scaleDown.stabilizationWindow`"]
    {
        assert!(page.contains(field), "docs/api.md lacks {field}");
    }
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let md = read(&page);
        for (line, target) in links(&md) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let file = if path.is_empty() { page.clone() } else { page.parent().expect("dir").join(path) };
            let at = format!("{}:{line}: {target}", rel(&page));
            if !file.exists() {
                broken.push(format!("{at}: no such file"));
            } else if !anchor.is_empty() && !anchors(&read(&file)).contains(anchor) {
                broken.push(format!("{at}: no heading with that anchor"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 20, "only {checked} relative links found: is the link parser broken?");
}

#[test]
fn the_link_checker_knows_githubs_anchors() {
    let md = "# Keyward\n## `keyward run`\n## ApiKey (`apikeys`, short name `ak`)\n## Usage\n### Usage\n```sh\n# not a heading\n```\n";
    let got = anchors(md);
    let want = ["keyward", "keyward-run", "apikey-apikeys-short-name-ak", "usage", "usage-1"];
    assert_eq!(got, want.iter().map(|s| s.to_string()).collect());
    assert_eq!(links("see [a](b.md#c) and `[x](not-a-link)` or [d](#e)"), vec![(1, "b.md#c".into()), (1, "#e".into())]);
}

/// The heredoc delimiter a command line opens, if any (`<<'EOF'`, `<<EOF`, `<<-EOF`).
fn heredoc_tag(line: &str) -> Option<String> {
    let rest = &line[line.find("<<")? + 2..];
    let tag: String = rest
        .trim_start_matches('-')
        .chars()
        .filter(|c| *c != '\'' && *c != '"')
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!tag.is_empty()).then_some(tag)
}

/// The commands of a block: in `console`, what follows `$ `; in `sh`, every line that is not a comment. A heredoc's
/// body and the lines a trailing `\` continues belong to their command.
fn commands(block: &Block) -> Vec<String> {
    let console = block.lang == "console";
    let mut out = Vec::new();
    let mut lines = block.text.lines();
    while let Some(line) = lines.next() {
        let cmd = if console {
            match line.strip_prefix("$ ") {
                Some(c) => c,
                None => continue,
            }
        } else if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        } else {
            line
        };
        let mut cmd = cmd.to_string();
        while cmd.ends_with('\\') {
            match lines.next() {
                Some(l) => cmd = format!("{cmd}\n{l}"),
                None => break,
            }
        }
        if let Some(tag) = heredoc_tag(&cmd) {
            for l in lines.by_ref() {
                cmd = format!("{cmd}\n{l}");
                if l.trim() == tag {
                    break;
                }
            }
        }
        out.push(cmd);
    }
    out
}

/// In a console block, the sample output shown after each command (in the order of [`commands`]).
fn samples(block: &Block) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut heredoc: Option<String> = None;
    let mut continued = false;
    for line in block.text.lines() {
        if let Some(tag) = &heredoc {
            if line.trim() == tag {
                heredoc = None;
            }
        } else if continued {
            continued = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            out.push(Vec::new());
            heredoc = heredoc_tag(cmd);
            continued = cmd.ends_with('\\');
        } else if let Some(last) = out.last_mut().filter(|_| !line.trim().is_empty()) {
            last.push(line.to_string());
        }
    }
    out
}

/// Whether `actual` output fits the `sample` shown: line by line, the first word is the same (an object's name,
/// `NAME`, `apikey.keyward.dev/x`), and a `NAME …` header line is the same word for word (the printer columns).
fn fits(sample: &[String], actual: &str) -> Result<(), String> {
    let actual: Vec<&str> = actual.lines().collect();
    for (i, want) in sample.iter().enumerate() {
        let got = actual.get(i).copied().unwrap_or_default();
        let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let same = if want.starts_with("NAME ") {
            words(want) == words(got)
        } else {
            words(want).first() == words(got).first()
        };
        if !same {
            return Err(format!("sample line {want:?}, got {got:?}"));
        }
    }
    Ok(())
}

/// The words of a command's first line (continuations joined, heredoc bodies left out), split into the simple
/// commands of its pipes and lists; quotes removed, comments and heredoc markers dropped.
fn segments(cmd: &str) -> Vec<Vec<String>> {
    let joined = cmd.replace("\\\n", " ");
    let head = joined.lines().next().unwrap_or_default();
    let mut segs: Vec<Vec<String>> = vec![Vec::new()];
    let (mut word, mut in_word, mut quote) = (String::new(), false, None::<char>);
    let flush = |segs: &mut Vec<Vec<String>>, word: &mut String, in_word: &mut bool| {
        if *in_word && !word.starts_with("<<") {
            segs.last_mut().expect("a segment").push(std::mem::take(word));
        }
        word.clear();
        *in_word = false;
    };
    for c in head.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, in_word) = (Some(c), true),
            (None, '#') if !in_word => break,
            (None, ' ' | '\t') => flush(&mut segs, &mut word, &mut in_word),
            (None, '|' | ';' | '&') => {
                flush(&mut segs, &mut word, &mut in_word);
                if !segs.last().expect("a segment").is_empty() {
                    segs.push(Vec::new());
                }
            }
            (None, c) => (word, in_word) = (word + &c.to_string(), true),
        }
    }
    flush(&mut segs, &mut word, &mut in_word);
    segs.retain(|s| !s.is_empty());
    segs
}

#[test]
fn commands_and_segments_are_read_as_a_shell_would() {
    let block = Block {
        lang: "console".into(),
        text: "$ kubectl apply -f - <<'EOF'\nkind: X\nEOF\noutput line\n$ helm install a b \\\n  --set 'x={a,b}'\n"
            .into(),
        line: 1,
    };
    let cmds = commands(&block);
    assert_eq!(samples(&block), vec![vec!["output line".to_string()], vec![]]);
    assert!(fits(&["NAME  READY".into(), "x True".into()], "NAME READY\nx    False\n").is_ok());
    assert!(fits(&["NAME  READY REASON".into()], "NAME READY\n").is_err());
    assert_eq!(cmds, vec!["kubectl apply -f - <<'EOF'\nkind: X\nEOF", "helm install a b \\\n  --set 'x={a,b}'"]);
    assert_eq!(segments(&cmds[0]), vec![vec!["kubectl", "apply", "-f", "-"]]);
    assert_eq!(segments(&cmds[1]), vec![vec!["helm", "install", "a", "b", "--set", "x={a,b}"]]);
    let piped = segments("kubectl get x -o jsonpath='{.a}' | base64 -d | cargo run -q -- verify-format   # note");
    assert_eq!(piped.len(), 3);
    assert_eq!(piped[2], vec!["cargo", "run", "-q", "--", "verify-format"]);
}

/// The files ```yaml blocks define: a block whose first line is `# NAME.yaml`.
fn defined_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for page in pages() {
        for b in blocks(&read(&page)).into_iter().filter(|b| b.lang == "yaml") {
            let first = b.text.lines().next().unwrap_or_default();
            if let Some(name) = first.strip_prefix("# ").filter(|n| n.ends_with(".yaml") && !n.contains(' ')) {
                files.insert(name.to_string(), b.text.clone());
            }
        }
    }
    files
}

fn succeeds(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!("exit {}: {}", out.status, stderr.lines().take(5).collect::<Vec<_>>().join(" / ")))
}

/// `keyward ARGS --help`: the subcommand and every flag before the help exist.
fn check_keyward(args: &[String]) -> Result<(), String> {
    succeeds(Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).arg("--help"))
}

fn check_cargo(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("test") => Ok(()),
        Some("run") => {
            if let Some(i) = args.iter().position(|a| a == "--example") {
                let name = args.get(i + 1).ok_or("--example without a name")?;
                let ex = root().join("examples");
                return (ex.join(format!("{name}.rs")).exists() || ex.join(name).join("main.rs").exists())
                    .then_some(())
                    .ok_or_else(|| format!("no example {name}"));
            }
            let rest = args.iter().position(|a| a == "--").map(|i| &args[i + 1..]).unwrap_or(&[]);
            check_keyward(rest)
        }
        other => Err(format!("cargo {other:?} is not a documented cargo command")),
    }
}

/// `helm install|upgrade|template RELEASE CHART FLAGS` renders with `helm template` and the same values.
fn check_helm(args: &[String], files: &BTreeMap<String, String>, tmp: &Path) -> Result<(), String> {
    let verb = args.first().map(String::as_str).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--create-namespace" | "--wait" | "--atomic" | "--install" => {}
            "-f" | "--values" => {
                let name = it.next().ok_or("-f without a file")?;
                let text = files.get(name).ok_or_else(|| format!("-f {name}: no ```yaml block defines it"))?;
                let path = tmp.join(name);
                std::fs::write(&path, text).map_err(|e| e.to_string())?;
                out.extend(["-f".to_string(), path.display().to_string()]);
            }
            "charts/keyward" | "./charts/keyward" => out.push(identity::chart_dir().display().to_string()),
            _ => out.push(a.clone()),
        }
    }
    let verb = match verb {
        "install" | "upgrade" | "template" => "template",
        "lint" => "lint",
        other => return Err(format!("helm {other} is not checked")),
    };
    succeeds(Command::new(identity::helm()).arg(verb).args(&out))
}

/// `kubectl ARGS --help`: the command exists and kubectl knows every flag given (it parses them all before it
/// prints the help). The objects and namespaces named are not looked up: they are the reader's.
fn check_kubectl(args: &[String]) -> Result<(), String> {
    if !args.iter().any(|a| !a.starts_with('-')) {
        return Err("kubectl without a command".into());
    }
    succeeds(Command::new(common::control_plane().binary()).arg("kubectl").args(args).arg("--help"))
}

/// Programs the docs use that need no check beyond `bash -n` (or cannot run here: `docker`).
const KNOWN: [&str; 9] = ["export", "cd", "echo", "base64", "cat", "docker", "go", "gofmt", "apt-get"];

fn check_segment(seg: &[String], files: &BTreeMap<String, String>, tmp: &Path) -> Result<(), String> {
    let words: Vec<String> = seg.iter().skip_while(|w| w.contains('=') && !w.starts_with('-')).cloned().collect();
    let Some((program, args)) = words.split_first() else { return Ok(()) };
    match program.as_str() {
        "keyward" => check_keyward(args),
        "cargo" => check_cargo(args),
        "helm" => check_helm(args, files, tmp),
        "kubectl" => check_kubectl(args),
        p if KNOWN.contains(&p) => Ok(()),
        p if p.contains('/') => root().join(p).exists().then_some(()).ok_or_else(|| format!("no script {p}")),
        p => Err(format!("{p} is not a program the docs check knows")),
    }
}

#[tokio::test]
async fn sh_blocks_are_valid_and_each_command_checks() {
    common::control_plane();
    let files = defined_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut failures, mut checked) = (Vec::new(), 0);
    for page in pages() {
        for b in blocks(&read(&page)).into_iter().filter(|b| b.lang == "sh" || b.lang == "console") {
            let cmds = commands(&b);
            let at = format!("{}:{}", rel(&page), b.line);
            if let Err(e) = succeeds(Command::new("bash").arg("-n").arg("-c").arg(cmds.join("\n"))) {
                failures.push(format!("{at}: bash -n: {e}"));
            }
            for cmd in cmds.iter().filter(|_| b.lang == "sh") {
                for seg in segments(cmd) {
                    checked += 1;
                    if let Err(e) = check_segment(&seg, &files, tmp.path()) {
                        failures.push(format!("{at}: `{}`: {e}", seg.join(" ")));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "commands in the docs that do not check:\n{}", failures.join("\n"));
    assert!(checked > 20, "only {checked} commands found in ```sh blocks: is the parser broken?");
}

/// A directory with `kubectl` (the test control plane's) and `keyward` (the binary under test), for `PATH`.
fn tool_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let cp = common::control_plane().binary().display().to_string();
    let script = format!("#!/bin/sh\nexec '{cp}' kubectl \"$@\"\n");
    std::fs::write(bin.join("kubectl"), script).expect("kubectl wrapper");
    std::fs::set_permissions(bin.join("kubectl"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_keyward"), bin.join("keyward")).expect("keyward link");
    bin
}

/// A copy of the control plane's kubeconfig whose current context is in `ns`.
fn kubeconfig_in(ns: &str, tmp: &Path) -> PathBuf {
    let path = tmp.join(format!("{ns}.kubeconfig"));
    std::fs::copy(common::control_plane().kubeconfig(), &path).expect("copy kubeconfig");
    let path_arg = path.display().to_string();
    let set = ["kubectl", "config", "set-context", "--current", "--namespace", ns, "--kubeconfig", &path_arg];
    succeeds(Command::new(common::control_plane().binary()).args(set)).expect("set the context's namespace");
    path
}

#[tokio::test]
async fn console_blocks_run_against_a_real_operator() {
    common::control_plane_with_crds().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tool_dir(tmp.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let (mut failures, mut ran) = (Vec::new(), 0);
    for page in pages() {
        let blocks: Vec<Block> = blocks(&read(&page)).into_iter().filter(|b| b.lang == "console").collect();
        if blocks.is_empty() {
            continue;
        }
        let stem = page.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        let ns = common::namespace(&format!("docs-{stem}").replace('.', "-"));
        let _op = operator::scoped(&ns);
        let kubeconfig = kubeconfig_in(&ns, tmp.path());
        'page: for b in &blocks {
            for (cmd, sample) in commands(b).into_iter().zip(samples(b)) {
                ran += 1;
                let mut sh = Command::new("bash");
                sh.args(["-euo", "pipefail", "-c", &cmd]).current_dir(root());
                sh.env("KUBECONFIG", &kubeconfig).env("PATH", &path).env("NO_COLOR", "1");
                let out = sh.output().expect("run bash");
                if !out.status.success() {
                    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                    failures.push(format!("{}:{}: `{cmd}` failed ({}):\n{o}{e}", rel(&page), b.line, out.status));
                    break 'page;
                }
                if let Err(e) = fits(&sample, &String::from_utf8_lossy(&out.stdout)) {
                    failures.push(format!(
                        "{}:{}: `{cmd}`: its output does not fit the sample: {e}",
                        rel(&page),
                        b.line
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "console blocks that do not run:\n{}", failures.join("\n"));
    assert!(ran >= 15, "only {ran} console commands ran: is the parser broken?");
}
