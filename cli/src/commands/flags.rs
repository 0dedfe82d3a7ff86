//! The flags that messages and help texts name, checked against the command line as clap
//! defines it. A hint that says "choose one with --to NODE" is right only for a command
//! whose `--to` takes a NODE; one that quotes `kith relay show NAME` is right only if that
//! command exists. Tests here and end to end hold every hint to it, so a renamed flag
//! cannot leave a hint behind.
//!
//! What it reads: `--flag` tokens, checked against the command the text belongs to, and
//! `kith SUBCOMMAND …` invocations, whose flags are checked against the command they name.
//! A flag followed by an upper-case placeholder (`--to HOST:PORT`) must take a value of
//! that name. Short flags and values are not checked.

use clap::{Command, CommandFactory};

use super::args::Cli;

/// The problems with the flags `text` names, for command `path` (`["tcp-outlet",
/// "create"]`; empty for `kith` itself): each flag the command does not take, or takes with
/// another kind of value, as one line. Flags of a `kith …` invocation quoted in `text` are
/// checked against the command it names instead. Empty if all is well.
pub fn unknown_flags(path: &[&str], text: &str) -> Vec<String> {
    let mut root = Cli::command();
    root.build();
    let mut problems = Vec::new();
    let Some(here) = descend(&root, path) else {
        problems.push(format!("there is no command `kith {}`", path.join(" ")));
        return problems;
    };
    // A shell line continued on the next is one invocation.
    let text = text.replace("\\\n", " ");
    let mut outside = String::new();
    let mut rest = text.as_str();
    while let Some(at) = find_invocation(&root, rest) {
        outside.push_str(&rest[..at]);
        let quoted = &rest[at..];
        let end = quoted
            .find(['`', '\n', '#', '|', '>', ';', '"'])
            .unwrap_or(quoted.len());
        let words: Vec<&str> = quoted[..end].split_whitespace().skip(1).collect();
        let (command, named) = resolve(&root, &words);
        check(
            command,
            &format!("kith {}", named.join(" ")),
            &words,
            &mut problems,
        );
        rest = &quoted[end..];
    }
    outside.push_str(rest);
    let words: Vec<&str> = outside.split_whitespace().collect();
    let shown = format!("kith {}", path.join(" "));
    check(here, shown.trim_end(), &words, &mut problems);
    problems
}

/// [`unknown_flags`] for `text` that answered the command line `args` (without `kith`):
/// its flags are checked against the command `args` names.
pub fn unknown_flags_in_reply(args: &[&str], text: &str) -> Vec<String> {
    let mut root = Cli::command();
    root.build();
    let (_, path) = resolve(&root, args);
    unknown_flags(&path, text)
}

/// The subcommand of `root` at `path`.
fn descend<'a>(root: &'a Command, path: &[&str]) -> Option<&'a Command> {
    path.iter()
        .try_fold(root, |command, name| command.find_subcommand(name))
}

/// The deepest subcommand the leading `words` name, and those words.
fn resolve<'a, 'w>(root: &'a Command, words: &[&'w str]) -> (&'a Command, Vec<&'w str>) {
    let mut command = root;
    let mut named = Vec::new();
    for word in words {
        match command.find_subcommand(word) {
            Some(sub) => {
                command = sub;
                named.push(*word);
            }
            None => break,
        }
    }
    (command, named)
}

/// Where the next `kith SUBCOMMAND` invocation in `text` starts: the word `kith` on its
/// own, followed by a subcommand's name (so prose such as "the kith version" is not one).
fn find_invocation(root: &Command, text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text.get(from..)?.find("kith ") {
        let at = from + found;
        let starts_word = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '`' | '(' | '"' | '\''));
        let next = text[at + "kith ".len()..].split_whitespace().next();
        if starts_word && next.is_some_and(|w| root.find_subcommand(w).is_some()) {
            return Some(at);
        }
        from = at + "kith ".len();
    }
    None
}

/// Check every `--flag` among `words` against `command` (shown as `shown`).
fn check(command: &Command, shown: &str, words: &[&str], problems: &mut Vec<String>) {
    for (i, word) in words.iter().enumerate() {
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let name_len = flag
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(flag.len());
        let name = &flag[..name_len];
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let Some(arg) = command.get_arguments().find(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name))
        }) else {
            problems.push(format!("`{shown}` has no --{name}"));
            continue;
        };
        // `--to NODE`: the placeholder must be the value the flag takes.
        let followed_by_value = name_len == flag.len();
        let placeholder = words.get(i + 1).and_then(|w| placeholder(w));
        let takes = arg
            .get_value_names()
            .and_then(|v| v.first().map(|n| n.as_str()));
        if let (true, Some(said), Some(takes)) = (followed_by_value, placeholder, takes)
            && said != takes
        {
            problems.push(format!(
                "`{shown}` takes --{name} {takes}, not --{name} {said}"
            ));
        }
    }
}

/// `word` as an upper-case placeholder (`NODE`, `HOST:PORT`), without trailing punctuation.
fn placeholder(word: &str) -> Option<&str> {
    let word = word.trim_end_matches(['.', ',', ';', ':', ')', '`', '\'', '"']);
    let is_placeholder = word.len() >= 2
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '_' | ':' | '-'));
    is_placeholder.then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_naming_a_flag_the_command_lacks_or_takes_otherwise_is_caught() {
        // The hint relay create used to share with tcp-outlet create.
        assert_eq!(
            unknown_flags(
                &["tcp-outlet", "create"],
                "several nodes are running (a, b); choose one with --to NODE"
            ),
            ["`kith tcp-outlet create` takes --to HOST:PORT, not --to NODE"]
        );
        assert!(
            unknown_flags(
                &["tcp-outlet", "create"],
                "several nodes are running (a, b); choose one with --at NODE"
            )
            .is_empty()
        );
        assert_eq!(
            unknown_flags(&["project", "show"], "choose one with --project NAME"),
            ["`kith project show` has no --project"]
        );
        // A quoted invocation is checked against the command it names, not the caller's.
        assert!(
            unknown_flags(
                &["node", "list"],
                "create one with `kith relay create NAME --to NODE`"
            )
            .is_empty()
        );
        assert_eq!(
            unknown_flags(&[], "free it with `kith relay delete db --at PROJECT`"),
            ["`kith relay delete` takes --at NODE, not --at PROJECT"]
        );
        assert_eq!(
            unknown_flags(&[], "see `kith relay show db --verbose-ish`"),
            ["`kith relay show` has no --verbose-ish"]
        );
        // Global flags are every command's; prose that only mentions kith is not a command.
        assert!(unknown_flags(&["relay", "list"], "add --output json").is_empty());
        assert!(unknown_flags(&[], "the kith version exchange failed").is_empty());
        assert_eq!(
            unknown_flags(&["nothing"], ""),
            ["there is no command `kith nothing`"]
        );
        assert_eq!(
            unknown_flags_in_reply(
                &["tcp-outlet", "create", "--to", "127.0.0.1:5432"],
                "choose one with --to NODE"
            ),
            ["`kith tcp-outlet create` takes --to HOST:PORT, not --to NODE"]
        );
    }

    /// Every command, with its path from the root.
    fn every_command(
        command: &Command,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, Command)>,
    ) {
        out.push((path.clone(), command.clone()));
        // clap's own `help` subcommands repeat the others' texts under another path.
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            path.push(sub.get_name().to_owned());
            every_command(sub, path, out);
            path.pop();
        }
    }

    #[test]
    fn every_help_text_names_only_flags_of_its_own_command_or_of_the_command_it_quotes() {
        let mut root = Cli::command();
        root.build();
        let mut commands = Vec::new();
        every_command(&root, &mut Vec::new(), &mut commands);
        let mut problems = Vec::new();
        for (path, command) in &commands {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let mut texts: Vec<String> = [
                command.get_about(),
                command.get_long_about(),
                command.get_after_help(),
            ]
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
            for arg in command.get_arguments() {
                texts.extend(
                    [arg.get_help(), arg.get_long_help()]
                        .into_iter()
                        .flatten()
                        .map(ToString::to_string),
                );
            }
            for text in texts {
                problems.extend(unknown_flags(&path, &text));
            }
        }
        problems.sort();
        problems.dedup();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn every_kith_command_quoted_in_the_sources_names_flags_it_has() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let mut problems = Vec::new();
        let mut quoted = 0;
        for krate in ["node", "transport", "identity", "authority", "cli"] {
            for file in rust_files(&workspace.join(krate).join("src")) {
                let text = std::fs::read_to_string(&file).unwrap();
                // Each `kith …` between backticks, as messages quote commands.
                for (i, piece) in text.split('`').enumerate() {
                    if i % 2 == 1 && piece.starts_with("kith ") && !piece.contains('\n') {
                        quoted += 1;
                        for problem in unknown_flags(&[], &format!("`{piece}`")) {
                            problems.push(format!("{}: {problem}", file.display()));
                        }
                    }
                }
            }
        }
        assert!(quoted > 20, "found only {quoted} quoted commands");
        assert!(problems.is_empty(), "{problems:#?}");
    }

    fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        out
    }
}
