//! Attribute policies: the small boolean language a service uses to decide which
//! authenticated peers may reach it (DESIGN §4, "Policies").
//!
//! A policy is written on the command line, e.g.
//! `kith tcp-outlet create --allow 'component = "db" and location = "sf"'`, parsed once into a
//! [`Policy`], and evaluated against every message's origin: the peer's identifier and the
//! attributes its credentials attest. [`PolicyAccessControl`] plugs a policy into a node's
//! mailbox as an [`IncomingAccessControl`].
//!
//! # Grammar
//!
//! ```text
//! policy     := expr EOF
//! expr       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | atom
//! atom       := "(" expr ")" | "true" | "false" | comparison
//! comparison := NAME ("=" | "!=") STRING
//!             | NAME "in" "[" STRING ("," STRING)* "]"
//! NAME       := [A-Za-z0-9_.-]+, other than a keyword
//! STRING     := '"' (any character but '"', '\' or a control character | '\"' | '\\')* '"'
//! keywords   := and or not in true false        (lowercase; `AND` is a name)
//! ```
//!
//! Any ASCII whitespace may separate tokens (a policy may span lines); it is required only
//! between two words, so `a="1"and b="2"` parses while in `a="1" andb="2"` `andb` is a name.
//! `not` binds tighter
//! than `and`, which binds tighter than `or`, so `a = "1" or b = "2" and c = "3"` means
//! `a = "1" or (b = "2" and c = "3")`. A comparison is an atom, so `not a = "1"` means
//! `not (a = "1")`.
//!
//! The name `identifier` is reserved: it stands for the peer's identifier (`I6c20…`), not for
//! an attribute, so `identifier = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a"` admits exactly
//! that identity. An attribute named `identifier`, or one whose name uses characters outside
//! `NAME` (credentials allow any printable ASCII but `=`), cannot be referenced.
//!
//! # Semantics
//!
//! `a = "v"` holds when the peer has attribute `a` with value `v`; `a != "v"` when it has `a`
//! with another value; `a in ["v", "w"]` when it has `a` with one of the listed values.
//! **A comparison on an attribute the peer does not have is false**, whatever the operator:
//! `x != "1"` does not admit a peer without `x`. An access policy must fail closed, and a peer
//! cannot be trusted to have omitted an attribute for a good reason. `not` is plain boolean
//! negation, so `not (location = "eu")` *does* admit a peer without a `location`; write
//! `location != "eu"` to require one.
//!
//! # Bounds
//!
//! Policies come from users and, through the CLI's state, from files, so parsing is bounded
//! like any untrusted input: at most [`MAX_POLICY_LEN`] bytes, [`MAX_POLICY_DEPTH`] levels of
//! nesting and [`MAX_POLICY_TERMS`] terms. Recursion in the parser, in evaluation, in
//! `Display` and in `Drop` is bounded by the nesting limit. Errors are positioned
//! ([`PolicyError::position`]) and [`PolicyError::render`] points at the offending column.
//!
//! A [`Policy`] can only be obtained by parsing, so every policy obeys the bounds and prints
//! (`Display`) in a canonical form that parses back to an equal policy.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;
use std::str::{CharIndices, FromStr};

use kith_node::{IncomingAccessControl, Origin};

/// 4 KiB: room for about 85 identifiers in an `identifier in [...]` allowlist and for any
/// realistic attribute rule, while a mistaken paste (a file, a key) is refused before it is
/// lexed. Applies both to the text as written and to its canonical form, so a policy stored
/// with `Display` always parses again.
pub const MAX_POLICY_LEN: usize = 4 * 1024;

/// 32 levels of `(` and `not`: far deeper than a readable policy, and shallow enough that the
/// recursive-descent parser (a handful of frames per level) cannot exhaust the stack.
pub const MAX_POLICY_DEPTH: usize = 32;

/// 128 terms (each comparison, each value of an `in` list, each `true`/`false`): above the
/// largest identifier allowlist that fits in [`MAX_POLICY_LEN`], and a bound on the work done
/// for every message a policy guards.
pub const MAX_POLICY_TERMS: usize = 128;

/// The reserved name that refers to the peer's identifier rather than an attribute.
const IDENTIFIER: &str = "identifier";

/// How many characters of a token an error message quotes before eliding the rest.
const QUOTE_CHARS: usize = 32;

/// A parsed attribute policy.
///
/// Equality is structural over the canonical form: redundant parentheses are dropped and
/// chains of `and` (or `or`) are flattened, so `(a = "1" and b = "2") and c = "3"` equals
/// `a = "1" and b = "2" and c = "3"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    expr: Expr,
}

impl Policy {
    /// Parse a policy written in the grammar of this module.
    ///
    /// Refuses text longer than [`MAX_POLICY_LEN`] (as written or in canonical form), nested
    /// deeper than [`MAX_POLICY_DEPTH`] or with more than [`MAX_POLICY_TERMS`] terms, and
    /// reports the first (leftmost) problem with its position.
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        if input.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLong {
                len: input.len(),
                max: MAX_POLICY_LEN,
            });
        }
        if input
            .trim_matches(|c: char| c.is_ascii_whitespace())
            .is_empty()
        {
            return Err(PolicyError::Empty);
        }
        let mut parser = Parser::new(input)?;
        let expr = parser.expr(0)?;
        if parser.current.token != Token::End {
            return Err(PolicyError::TrailingInput {
                at: parser.position(parser.current.offset),
                found: parser.current.token.describe(),
            });
        }
        let policy = Self { expr };
        // Display adds spaces that the input may have left out; refusing here keeps the
        // promise that a policy's canonical form always parses again.
        let canonical = policy.to_string().len();
        if canonical > MAX_POLICY_LEN {
            return Err(PolicyError::CanonicalTooLong {
                len: canonical,
                max: MAX_POLICY_LEN,
            });
        }
        Ok(policy)
    }

    /// Whether a peer with this identifier and these attested attributes satisfies the
    /// policy. A comparison on an attribute the peer does not have is false.
    pub fn allows(&self, identifier: &str, attributes: &BTreeMap<String, String>) -> bool {
        self.expr.eval(identifier, attributes)
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form: one space around operators and keywords, `", "` between listed
/// values, parentheses only where precedence needs them (so `not (a = "1")` prints as
/// `not a = "1"`). It parses back to an equal policy and is never nested deeper than the text
/// it was parsed from.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

/// Admits messages from secure channels whose authenticated peer satisfies the policy.
///
/// Every other origin is refused: [`Origin::Local`] and [`Origin::Transport`] carry no
/// authenticated identifier or attested attributes to evaluate, and treating them as "no
/// attributes" would let `not (…)` policies admit unauthenticated connections. A service that
/// also serves workers on its own node combines this with [`kith_node::AllowLocal`] itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyAccessControl(pub Policy);

impl IncomingAccessControl for PolicyAccessControl {
    fn is_authorized(&self, origin: &Origin) -> bool {
        match origin {
            Origin::SecureChannel(peer) => self.0.allows(&peer.identifier, &peer.attributes),
            Origin::Local | Origin::Transport { .. } => false,
        }
    }
}

/// Where in the policy text an error is: a byte offset for programs, a line and column (in
/// characters, from 1) for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Byte offset from the start of the text; always on a character boundary, at most the
    /// text's length (which means "at the end").
    pub offset: usize,
    /// Line number, from 1.
    pub line: usize,
    /// Column in characters (not bytes) on that line, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `input` (clamped to the text's end and to the start of
    /// the character that holds it).
    fn of(input: &str, offset: usize) -> Self {
        let mut boundary = 0usize;
        let mut line = 1usize;
        let mut column = 1usize;
        for (i, c) in input.char_indices() {
            let end = i.saturating_add(c.len_utf8());
            if end > offset {
                break;
            }
            boundary = end;
            if c == '\n' {
                line = line.saturating_add(1);
                column = 1;
            } else {
                column = column.saturating_add(1);
            }
        }
        Self {
            offset: boundary,
            line,
            column,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 1 {
            write!(f, "column {}", self.column)
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

/// Why text is not a valid policy. Every variant but [`PolicyError::TooLong`],
/// [`PolicyError::CanonicalTooLong`] and [`PolicyError::Empty`] points at the first offending
/// token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is longer than [`MAX_POLICY_LEN`].
    #[error(
        "policy is {len} bytes long; at most {max} are allowed (to admit many peers, give them an \
         attribute and match on it rather than listing identifiers)"
    )]
    TooLong {
        /// The text's length in bytes.
        len: usize,
        /// The limit, [`MAX_POLICY_LEN`].
        max: usize,
    },
    /// The text fits, but its canonical form (which adds spaces around operators) does not.
    #[error(
        "policy is {len} bytes long once written with spaces around its operators; at most \
         {max} are allowed (shorten it)"
    )]
    CanonicalTooLong {
        /// The canonical form's length in bytes.
        len: usize,
        /// The limit, [`MAX_POLICY_LEN`].
        max: usize,
    },
    /// Nothing but whitespace.
    #[error(
        "empty policy; write one like component = \"db\", or true to admit every authenticated \
         peer"
    )]
    Empty,
    /// A character that starts no token.
    #[error(
        "at {at}: unexpected character {found:?} (U+{code:04X}); names use letters, digits, \
         '-', '_' and '.', values are double-quoted, operators are =, != and in",
        code = u32::from(*.found)
    )]
    InvalidCharacter {
        /// Where the character is.
        at: Position,
        /// The character.
        found: char,
    },
    /// A string whose closing quote is missing.
    #[error("at {at}: this string has no closing '\"'")]
    UnterminatedString {
        /// Where the opening quote is.
        at: Position,
    },
    /// A backslash followed by anything but `"` or `\`.
    #[error(
        "at {at}: invalid escape '\\{}' in a string; only \\\" and \\\\ are allowed",
        .found.escape_debug()
    )]
    InvalidEscape {
        /// Where the backslash is.
        at: Position,
        /// The character after it.
        found: char,
    },
    /// A control character (newline, tab, ...) inside a string; attribute values never hold
    /// one.
    #[error(
        "at {at}: control character U+{code:04X} in a string; attribute values cannot contain \
         control characters",
        code = u32::from(*.found)
    )]
    ControlCharacter {
        /// Where the character is.
        at: Position,
        /// The character.
        found: char,
    },
    /// Something other than the start of an expression where one must begin.
    #[error(
        "at {at}: expected a comparison (like component = \"db\"), \"(\", \"not\", \"true\" or \
         \"false\", found {found}"
    )]
    ExpectedExpression {
        /// Where the token is.
        at: Position,
        /// What was found instead, described for people.
        found: String,
    },
    /// A name not followed by an operator.
    #[error(
        "at {at}: expected \"=\", \"!=\" or \"in\" after {}, found {found}",
        describe_subject(.name)
    )]
    ExpectedOperator {
        /// Where the token after the name is.
        at: Position,
        /// The name (`identifier` or an attribute name).
        name: String,
        /// What was found instead, described for people.
        found: String,
    },
    /// Something other than a string where a value must be.
    #[error("at {at}: expected a double-quoted value like \"db\", found {found}")]
    ExpectedValue {
        /// Where the token is.
        at: Position,
        /// What was found instead, described for people.
        found: String,
    },
    /// `in` not followed by `[`.
    #[error("at {at}: expected \"[\" to start the list of values after \"in\", found {found}")]
    ExpectedList {
        /// Where the token is.
        at: Position,
        /// What was found instead, described for people.
        found: String,
    },
    /// A listed value followed by neither `,` nor `]`.
    #[error("at {at}: expected \",\" or \"]\" after a value in the list, found {found}")]
    ExpectedListSeparator {
        /// Where the token is.
        at: Position,
        /// What was found instead, described for people.
        found: String,
    },
    /// A `(` whose `)` is missing.
    #[error("at {at}: expected \")\" to close the \"(\" at {open}, found {found}")]
    UnclosedParen {
        /// Where the `)` was expected.
        at: Position,
        /// Where the `(` is.
        open: Position,
        /// What was found instead, described for people.
        found: String,
    },
    /// A complete expression followed by more text.
    #[error("at {at}: expected \"and\", \"or\" or the end of the policy, found {found}")]
    TrailingInput {
        /// Where the extra token is.
        at: Position,
        /// What was found, described for people.
        found: String,
    },
    /// More than [`MAX_POLICY_DEPTH`] nested `(` and `not`.
    #[error(
        "at {at}: more than {max} levels of nested parentheses and \"not\"; simplify the policy"
    )]
    TooDeep {
        /// Where the `(` or `not` that goes too deep is.
        at: Position,
        /// The limit, [`MAX_POLICY_DEPTH`].
        max: usize,
    },
    /// More than [`MAX_POLICY_TERMS`] terms.
    #[error(
        "at {at}: more than {max} terms (comparisons, listed values, true and false); give the \
         peers an attribute and match on it instead"
    )]
    TooManyTerms {
        /// Where the term over the limit is.
        at: Position,
        /// The limit, [`MAX_POLICY_TERMS`].
        max: usize,
    },
}

impl PolicyError {
    /// Where in the text the error is, if it is about one place.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::TooLong { .. } | Self::CanonicalTooLong { .. } | Self::Empty => None,
            Self::InvalidCharacter { at, .. }
            | Self::UnterminatedString { at }
            | Self::InvalidEscape { at, .. }
            | Self::ControlCharacter { at, .. }
            | Self::ExpectedExpression { at, .. }
            | Self::ExpectedOperator { at, .. }
            | Self::ExpectedValue { at, .. }
            | Self::ExpectedList { at, .. }
            | Self::ExpectedListSeparator { at, .. }
            | Self::UnclosedParen { at, .. }
            | Self::TrailingInput { at, .. }
            | Self::TooDeep { at, .. }
            | Self::TooManyTerms { at, .. } => Some(*at),
        }
    }

    /// The message, then the offending line of `input` with a caret under the error, for a
    /// terminal:
    ///
    /// ```text
    /// at column 11: expected "=", "!=" or "in" after attribute name "component", found "db"
    ///   component db
    ///             ^
    /// ```
    ///
    /// `input` should be the text that was parsed; with any other text the caret is misplaced
    /// but nothing fails. Control characters in the line are shown as U+FFFD so the echo
    /// cannot drive the terminal. Tabs are kept so the caret stays aligned.
    pub fn render(&self, input: &str) -> String {
        let Some(at) = self.position() else {
            return self.to_string();
        };
        let line = input
            .split('\n')
            .nth(at.line.saturating_sub(1))
            .unwrap_or_default();
        let line = line.strip_suffix('\r').unwrap_or(line);
        let shown: String = line
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect();
        let pad: String = line
            .chars()
            .take(at.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("{self}\n  {shown}\n  {pad}^")
    }
}

/// `attribute name "x"`, or `"identifier"` for the reserved name.
fn describe_subject(name: &str) -> String {
    if name == IDENTIFIER {
        format!("{IDENTIFIER:?}")
    } else {
        format!("attribute name {:?}", shorten(name))
    }
}

/// The first [`QUOTE_CHARS`] characters of `s`, with `…` if there were more.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(QUOTE_CHARS).collect();
    if s.chars().nth(QUOTE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// An expression. Invariants kept by the parser (and relied on by `Display` and `Eq`):
/// `And`/`Or` have at least two operands and none of them is of the same kind (chains are
/// flattened); `In` has at least one value; names match `NAME` and are not keywords or
/// `identifier`; values hold no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Expr {
    True,
    False,
    Compare {
        subject: Subject,
        op: Op,
        value: String,
    },
    In {
        subject: Subject,
        values: Vec<String>,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// What a comparison looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Identifier,
    Attribute(String),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Eq,
    Ne,
}

impl Expr {
    fn eval(&self, identifier: &str, attributes: &BTreeMap<String, String>) -> bool {
        let lookup = |subject: &Subject| match subject {
            Subject::Identifier => Some(identifier),
            Subject::Attribute(name) => attributes.get(name).map(String::as_str),
        };
        match self {
            Self::True => true,
            Self::False => false,
            Self::Compare { subject, op, value } => match (lookup(subject), op) {
                (None, _) => false,
                (Some(actual), Op::Eq) => actual == value,
                (Some(actual), Op::Ne) => actual != value,
            },
            Self::In { subject, values } => {
                lookup(subject).is_some_and(|actual| values.iter().any(|v| v == actual))
            }
            Self::Not(inner) => !inner.eval(identifier, attributes),
            Self::And(all) => all.iter().all(|e| e.eval(identifier, attributes)),
            Self::Or(any) => any.iter().any(|e| e.eval(identifier, attributes)),
        }
    }

    /// `And`/`Or` of `items`, splicing operands that are already of the same kind.
    fn join(items: Vec<Expr>, or: bool) -> Expr {
        let mut flat = Vec::with_capacity(items.len());
        for item in items {
            match (item, or) {
                (Self::Or(inner), true) | (Self::And(inner), false) => flat.extend(inner),
                (other, _) => flat.push(other),
            }
        }
        if or { Self::Or(flat) } else { Self::And(flat) }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parentheses only where the grammar needs them: this keeps the canonical form no
        // deeper than any text that parses to the same policy (see MAX_POLICY_DEPTH).
        let operands = |f: &mut fmt::Formatter<'_>, items: &[Expr], keyword: &str, or: bool| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {keyword} ")?;
                }
                match item {
                    Self::Or(_) if !or => write!(f, "({item})")?,
                    _ => write!(f, "{item}")?,
                }
            }
            Ok(())
        };
        match self {
            Self::True => f.write_str("true"),
            Self::False => f.write_str("false"),
            Self::Compare { subject, op, value } => {
                let op = match op {
                    Op::Eq => "=",
                    Op::Ne => "!=",
                };
                write!(f, "{subject} {op} {}", Quoted(value))
            }
            Self::In { subject, values } => {
                write!(f, "{subject} in [")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Quoted(v))?;
                }
                f.write_str("]")
            }
            Self::Not(inner) => match **inner {
                Self::And(_) | Self::Or(_) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Self::And(items) => operands(f, items, "and", false),
            Self::Or(items) => operands(f, items, "or", true),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identifier => f.write_str(IDENTIFIER),
            Self::Attribute(name) => f.write_str(name),
        }
    }
}

/// A value as a policy string literal.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// A lexical token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Name(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Ne,
    And,
    Or,
    Not,
    In,
    True,
    False,
    End,
}

impl Token {
    /// The token as an error message quotes it.
    fn describe(&self) -> String {
        let fixed = match self {
            Self::Name(name) => return format!("{:?}", shorten(name)),
            Self::Str(value) => return format!("the string {:?}", shorten(value)),
            Self::End => return "the end of the policy".to_owned(),
            Self::LParen => "(",
            Self::RParen => ")",
            Self::LBracket => "[",
            Self::RBracket => "]",
            Self::Comma => ",",
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::And => "and",
            Self::Or => "or",
            Self::Not => "not",
            Self::In => "in",
            Self::True => "true",
            Self::False => "false",
        };
        format!("{fixed:?}")
    }
}

/// A token and the byte offset it starts at.
#[derive(Debug)]
struct Spanned {
    token: Token,
    offset: usize,
}

/// Whether `c` may appear in a name or keyword.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Turns text into tokens on demand, so the first error reported is the leftmost one.
struct Lexer<'a> {
    input: &'a str,
    chars: Peekable<CharIndices<'a>>,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            chars: input.char_indices().peekable(),
        }
    }

    fn next_token(&mut self) -> Result<Spanned, PolicyError> {
        while self
            .chars
            .next_if(|(_, c)| c.is_ascii_whitespace())
            .is_some()
        {}
        let Some((offset, c)) = self.chars.next() else {
            return Ok(Spanned {
                token: Token::End,
                offset: self.input.len(),
            });
        };
        let token = match c {
            '(' => Token::LParen,
            ')' => Token::RParen,
            '[' => Token::LBracket,
            ']' => Token::RBracket,
            ',' => Token::Comma,
            '=' => Token::Eq,
            '!' if self.chars.next_if(|&(_, c)| c == '=').is_some() => Token::Ne,
            '"' => self.string(offset)?,
            c if is_word_char(c) => self.word(c),
            found => {
                return Err(PolicyError::InvalidCharacter {
                    at: Position::of(self.input, offset),
                    found,
                });
            }
        };
        Ok(Spanned { token, offset })
    }

    fn word(&mut self, first: char) -> Token {
        let mut word = String::from(first);
        while let Some((_, c)) = self.chars.next_if(|&(_, c)| is_word_char(c)) {
            word.push(c);
        }
        match word.as_str() {
            "and" => Token::And,
            "or" => Token::Or,
            "not" => Token::Not,
            "in" => Token::In,
            "true" => Token::True,
            "false" => Token::False,
            _ => Token::Name(word),
        }
    }

    /// The rest of a string whose opening quote is at `open`.
    fn string(&mut self, open: usize) -> Result<Token, PolicyError> {
        let mut value = String::new();
        loop {
            match self.chars.next() {
                None => {
                    return Err(PolicyError::UnterminatedString {
                        at: Position::of(self.input, open),
                    });
                }
                Some((_, '"')) => return Ok(Token::Str(value)),
                Some((at, '\\')) => match self.chars.next() {
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    Some((_, found)) => {
                        return Err(PolicyError::InvalidEscape {
                            at: Position::of(self.input, at),
                            found,
                        });
                    }
                    None => {
                        return Err(PolicyError::UnterminatedString {
                            at: Position::of(self.input, open),
                        });
                    }
                },
                Some((at, found)) if found.is_control() => {
                    return Err(PolicyError::ControlCharacter {
                        at: Position::of(self.input, at),
                        found,
                    });
                }
                Some((_, c)) => value.push(c),
            }
        }
    }
}

/// Recursive descent over the grammar in the module docs, one token of lookahead.
///
/// A token is consumed only once it is known to fit, so that an error about it is reported
/// before any error in the text after it.
struct Parser<'a> {
    lexer: Lexer<'a>,
    current: Spanned,
    terms: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Result<Self, PolicyError> {
        let mut lexer = Lexer::new(input);
        let current = lexer.next_token()?;
        Ok(Self {
            lexer,
            current,
            terms: 0,
        })
    }

    fn position(&self, offset: usize) -> Position {
        Position::of(self.lexer.input, offset)
    }

    fn here(&self) -> Position {
        self.position(self.current.offset)
    }

    /// Consume the current token and return it.
    fn bump(&mut self) -> Result<Spanned, PolicyError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.current, next))
    }

    /// Count one more term, starting at `offset`.
    fn term(&mut self, offset: usize) -> Result<(), PolicyError> {
        self.terms = self.terms.saturating_add(1);
        if self.terms > MAX_POLICY_TERMS {
            return Err(PolicyError::TooManyTerms {
                at: self.position(offset),
                max: MAX_POLICY_TERMS,
            });
        }
        Ok(())
    }

    /// One more level of nesting below `depth`, for the `(` or `not` that is current.
    fn deeper(&self, depth: usize) -> Result<usize, PolicyError> {
        let deeper = depth.saturating_add(1);
        if deeper > MAX_POLICY_DEPTH {
            return Err(PolicyError::TooDeep {
                at: self.here(),
                max: MAX_POLICY_DEPTH,
            });
        }
        Ok(deeper)
    }

    /// `expr := or`; `or := and ("or" and)*`.
    fn expr(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let first = self.and(depth)?;
        if self.current.token != Token::Or {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.current.token == Token::Or {
            self.bump()?;
            items.push(self.and(depth)?);
        }
        Ok(Expr::join(items, true))
    }

    /// `and := unary ("and" unary)*`.
    fn and(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let first = self.unary(depth)?;
        if self.current.token != Token::And {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.current.token == Token::And {
            self.bump()?;
            items.push(self.unary(depth)?);
        }
        Ok(Expr::join(items, false))
    }

    /// `unary := "not" unary | atom`.
    fn unary(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        if self.current.token != Token::Not {
            return self.atom(depth);
        }
        let depth = self.deeper(depth)?;
        self.bump()?;
        Ok(Expr::Not(Box::new(self.unary(depth)?)))
    }

    /// `atom := "(" expr ")" | "true" | "false" | comparison`.
    fn atom(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        match self.current.token {
            Token::LParen => {
                let inner_depth = self.deeper(depth)?;
                let open = self.bump()?.offset;
                let inner = self.expr(inner_depth)?;
                if self.current.token != Token::RParen {
                    return Err(PolicyError::UnclosedParen {
                        at: self.here(),
                        open: self.position(open),
                        found: self.current.token.describe(),
                    });
                }
                self.bump()?;
                Ok(inner)
            }
            Token::True | Token::False => {
                self.term(self.current.offset)?;
                let yes = self.current.token == Token::True;
                self.bump()?;
                Ok(if yes { Expr::True } else { Expr::False })
            }
            Token::Name(_) => self.comparison(),
            _ => Err(PolicyError::ExpectedExpression {
                at: self.here(),
                found: self.current.token.describe(),
            }),
        }
    }

    /// `comparison := NAME ("=" | "!=") STRING | NAME "in" "[" STRING ("," STRING)* "]"`,
    /// with the name current.
    fn comparison(&mut self) -> Result<Expr, PolicyError> {
        let start = self.current.offset;
        let Token::Name(name) = self.bump()?.token else {
            // Only called with a name current; answer as the grammar would rather than panic.
            return Err(PolicyError::ExpectedExpression {
                at: self.position(start),
                found: "something else".to_owned(),
            });
        };
        let subject = if name == IDENTIFIER {
            Subject::Identifier
        } else {
            Subject::Attribute(name)
        };
        let op = match self.current.token {
            Token::Eq => Op::Eq,
            Token::Ne => Op::Ne,
            Token::In => return self.list(subject),
            _ => {
                return Err(PolicyError::ExpectedOperator {
                    at: self.here(),
                    name: subject.to_string(),
                    found: self.current.token.describe(),
                });
            }
        };
        self.term(start)?;
        self.bump()?;
        let value = self.value()?;
        Ok(Expr::Compare { subject, op, value })
    }

    /// `"in" "[" STRING ("," STRING)* "]"`, with `in` current.
    fn list(&mut self, subject: Subject) -> Result<Expr, PolicyError> {
        self.bump()?;
        if self.current.token != Token::LBracket {
            return Err(PolicyError::ExpectedList {
                at: self.here(),
                found: self.current.token.describe(),
            });
        }
        self.bump()?;
        let mut values = Vec::new();
        loop {
            self.term(self.current.offset)?;
            values.push(self.value()?);
            match self.current.token {
                Token::Comma => {
                    self.bump()?;
                }
                Token::RBracket => {
                    self.bump()?;
                    return Ok(Expr::In { subject, values });
                }
                _ => {
                    return Err(PolicyError::ExpectedListSeparator {
                        at: self.here(),
                        found: self.current.token.describe(),
                    });
                }
            }
        }
    }

    /// A string literal, which must be current.
    fn value(&mut self) -> Result<String, PolicyError> {
        let at = self.here();
        let found = match &self.current.token {
            Token::Str(_) => None,
            other => Some(other.describe()),
        };
        if let Some(found) = found {
            return Err(PolicyError::ExpectedValue { at, found });
        }
        match self.bump()?.token {
            Token::Str(value) => Ok(value),
            other => Err(PolicyError::ExpectedValue {
                at,
                found: other.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use kith_node::ChannelPeer;
    use proptest::prelude::*;

    const ID: &str = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a";
    const OTHER_ID: &str = "I0000000000000000000000000000000000000000";

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(s: &str) -> Policy {
        Policy::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {}", e.render(s)))
    }

    fn err(s: &str) -> PolicyError {
        match Policy::parse(s) {
            Ok(p) => panic!("{s:?} should not parse, but gave {p}"),
            Err(e) => e,
        }
    }

    /// The error's message and its (line, column).
    fn err_at(s: &str) -> (String, Option<(usize, usize)>) {
        let e = err(s);
        (e.to_string(), e.position().map(|p| (p.line, p.column)))
    }

    #[test]
    fn documented_examples_parse_and_print_canonically() {
        for (text, canonical) in [
            (
                r#"component = "db" and location = "sf""#,
                r#"component = "db" and location = "sf""#,
            ),
            (
                r#"ockam-role = "enroller" or identifier = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a""#,
                r#"ockam-role = "enroller" or identifier = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a""#,
            ),
            (r#"not (location = "eu")"#, r#"not location = "eu""#),
            (
                r#"(a = "1" or b = "2") and c != "3""#,
                r#"(a = "1" or b = "2") and c != "3""#,
            ),
            ("true", "true"),
            ("false", "false"),
            (
                r#"location_2 in ["sf","ny"]"#,
                r#"location_2 in ["sf", "ny"]"#,
            ),
            (r#"ockam-relay="x""#, r#"ockam-relay = "x""#),
            ("a = \"1\"\n  and\tb = \"2\"\r\n", r#"a = "1" and b = "2""#),
        ] {
            let p = parse(text);
            assert_eq!(p.to_string(), canonical, "{text:?}");
            assert_eq!(parse(canonical), p, "{canonical:?}");
            assert_eq!(text.parse::<Policy>(), Ok(p));
        }
    }

    #[test]
    fn component_and_location_requires_both_values() {
        let p = parse(r#"component = "db" and location = "sf""#);
        assert!(p.allows(ID, &attrs(&[("component", "db"), ("location", "sf")])));
        assert!(p.allows(
            ID,
            &attrs(&[("component", "db"), ("location", "sf"), ("extra", "x")])
        ));
        assert!(
            !p.allows(ID, &attrs(&[("component", "db")])),
            "missing location"
        );
        assert!(
            !p.allows(ID, &attrs(&[("component", "db"), ("location", "ny")])),
            "wrong location"
        );
        assert!(
            !p.allows(ID, &attrs(&[("component", "DB"), ("location", "sf")])),
            "values are case-sensitive"
        );
        assert!(!p.allows(ID, &attrs(&[])), "no attributes");
    }

    #[test]
    fn enroller_role_or_one_identifier_is_admitted() {
        let p = parse(&format!(
            r#"ockam-role = "enroller" or identifier = "{ID}""#
        ));
        assert!(p.allows(OTHER_ID, &attrs(&[("ockam-role", "enroller")])));
        assert!(p.allows(ID, &attrs(&[])));
        assert!(!p.allows(OTHER_ID, &attrs(&[])), "wrong identifier");
        assert!(
            !p.allows(OTHER_ID, &attrs(&[("ockam-role", "member")])),
            "wrong role"
        );
    }

    #[test]
    fn identifier_is_the_peer_identifier_never_an_attribute() {
        let p = parse(&format!(r#"identifier = "{ID}""#));
        assert!(p.allows(ID, &attrs(&[])));
        assert!(
            !p.allows(OTHER_ID, &attrs(&[("identifier", ID)])),
            "an attribute named identifier must not impersonate the peer's identifier"
        );
        let p = parse(&format!(r#"identifier != "{ID}""#));
        assert!(p.allows(OTHER_ID, &attrs(&[])));
        assert!(!p.allows(ID, &attrs(&[])));
        let p = parse(&format!(r#"identifier in ["{OTHER_ID}", "{ID}"]"#));
        assert!(p.allows(ID, &attrs(&[])));
        assert!(!p.allows("I1111111111111111111111111111111111111111", &attrs(&[])));
    }

    #[test]
    fn absent_attribute_satisfies_no_comparison() {
        let none = attrs(&[]);
        for text in [r#"x = "1""#, r#"x != "1""#, r#"x in ["1", "2"]"#] {
            assert!(!parse(text).allows(ID, &none), "{text}");
        }
        assert!(parse(r#"x != "1""#).allows(ID, &attrs(&[("x", "2")])));
        assert!(!parse(r#"x != "1""#).allows(ID, &attrs(&[("x", "1")])));
    }

    #[test]
    fn not_negates_so_it_admits_peers_without_the_attribute() {
        let p = parse(r#"not (location = "eu")"#);
        assert!(p.allows(ID, &attrs(&[("location", "us")])));
        assert!(
            p.allows(ID, &attrs(&[])),
            "documented: not (absent) is true"
        );
        assert!(!p.allows(ID, &attrs(&[("location", "eu")])));
    }

    #[test]
    fn grouped_or_and_not_equal_evaluate_as_written() {
        let p = parse(r#"(a = "1" or b = "2") and c != "3""#);
        assert!(p.allows(ID, &attrs(&[("a", "1"), ("c", "4")])));
        assert!(p.allows(ID, &attrs(&[("b", "2"), ("c", "")])));
        assert!(!p.allows(ID, &attrs(&[("a", "1"), ("c", "3")])), "c is 3");
        assert!(!p.allows(ID, &attrs(&[("a", "1")])), "c is absent");
        assert!(!p.allows(ID, &attrs(&[("a", "2"), ("b", "1"), ("c", "4")])));
    }

    #[test]
    fn true_admits_every_peer_and_false_none() {
        assert!(parse("true").allows(ID, &attrs(&[])));
        assert!(!parse("false").allows(ID, &attrs(&[("a", "1")])));
        assert!(!parse("not true").allows(ID, &attrs(&[])));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let p = parse(r#"a = "1" or b = "2" and c = "3""#);
        assert_eq!(p, parse(r#"a = "1" or (b = "2" and c = "3")"#));
        assert_ne!(p, parse(r#"(a = "1" or b = "2") and c = "3""#));
        assert!(p.allows(ID, &attrs(&[("a", "1")])), "a alone suffices");
        assert!(!p.allows(ID, &attrs(&[("b", "2")])), "b needs c");
        assert!(p.allows(ID, &attrs(&[("b", "2"), ("c", "3")])));
        assert_eq!(p.to_string(), r#"a = "1" or b = "2" and c = "3""#);
    }

    #[test]
    fn not_binds_tighter_than_and() {
        let p = parse(r#"not a = "1" and b = "2""#);
        assert_eq!(p, parse(r#"(not a = "1") and b = "2""#));
        assert!(p.allows(ID, &attrs(&[("b", "2")])));
        assert!(!p.allows(ID, &attrs(&[("a", "1"), ("b", "2")])));
        assert_eq!(
            parse(r#"not (a = "1" and b = "2")"#).to_string(),
            r#"not (a = "1" and b = "2")"#
        );
        assert_eq!(parse("not not true").to_string(), "not not true");
    }

    #[test]
    fn redundant_parentheses_and_chains_are_flattened() {
        let flat = parse(r#"a = "1" and b = "2" and c = "3""#);
        assert_eq!(parse(r#"(a = "1" and b = "2") and c = "3""#), flat);
        assert_eq!(parse(r#"a = "1" and (b = "2" and (c = "3"))"#), flat);
        assert_eq!(parse(r#"((((a = "1")))) and b = "2" and c = "3""#), flat);
        assert_eq!(flat.to_string(), r#"a = "1" and b = "2" and c = "3""#);
        assert_eq!(
            parse(r#"(a = "1" or b = "2") or (c = "3")"#).to_string(),
            r#"a = "1" or b = "2" or c = "3""#
        );
    }

    #[test]
    fn keywords_are_lowercase_only() {
        let (msg, at) = err_at(r#"a = "1" AND b = "2""#);
        assert_eq!(
            msg,
            r#"at column 9: expected "and", "or" or the end of the policy, found "AND""#
        );
        assert_eq!(at, Some((1, 9)));
        // Capitalised keywords are plain names.
        assert!(parse(r#"TRUE = "1""#).allows(ID, &attrs(&[("TRUE", "1")])));
    }

    #[test]
    fn escapes_and_unicode_values_round_trip() {
        let p = parse(r#"quote = "say \"hi\" \\ bye" and city = "Zürich""#);
        assert!(p.allows(
            ID,
            &attrs(&[("quote", r#"say "hi" \ bye"#), ("city", "Zürich")])
        ));
        assert_eq!(
            p.to_string(),
            r#"quote = "say \"hi\" \\ bye" and city = "Zürich""#
        );
        assert!(parse(r#"empty = """#).allows(ID, &attrs(&[("empty", "")])));
    }

    #[test]
    fn policy_access_control_evaluates_only_secure_channel_peers() {
        let ac = PolicyAccessControl(parse(r#"component = "db""#));
        let peer = |attributes| {
            Origin::SecureChannel(Arc::new(ChannelPeer {
                identifier: ID.to_owned(),
                attributes,
                handshake_hash: [0; 32],
                source: None,
            }))
        };
        assert!(ac.is_authorized(&peer(attrs(&[("component", "db")]))));
        assert!(!ac.is_authorized(&peer(attrs(&[("component", "web")]))));
        assert!(!ac.is_authorized(&Origin::Local));
        assert!(!ac.is_authorized(&Origin::Transport {
            connection: kith_node::Address::local("tcp-1"),
            peer: None,
        }));
        // Even a policy that admits every authenticated peer admits nobody else.
        let all = PolicyAccessControl(parse("true"));
        assert!(all.is_authorized(&peer(attrs(&[]))));
        assert!(!all.is_authorized(&Origin::Local));
        let negated = PolicyAccessControl(parse(r#"not component = "db""#));
        assert!(!negated.is_authorized(&Origin::Transport {
            connection: kith_node::Address::local("tcp-1"),
            peer: None,
        }));
    }

    // One test per error kind, pinning message and position.

    #[test]
    fn error_too_long() {
        let text = format!(r#"a = "{}""#, "x".repeat(MAX_POLICY_LEN));
        let e = err(&text);
        assert_eq!(
            e,
            PolicyError::TooLong {
                len: MAX_POLICY_LEN + 6,
                max: MAX_POLICY_LEN
            }
        );
        assert!(
            e.to_string()
                .starts_with("policy is 4102 bytes long; at most 4096")
        );
        assert_eq!(e.position(), None);
        assert_eq!(e.render(&text), e.to_string());
        // Exactly at the limit is fine.
        let text = format!(r#"a = "{}""#, "x".repeat(MAX_POLICY_LEN - 6));
        assert_eq!(text.len(), MAX_POLICY_LEN);
        parse(&text);
    }

    #[test]
    fn error_canonical_too_long() {
        // Compact terms joined without optional spaces fit in 4 KiB; with the spaces the
        // canonical form adds around `=` and `or`, they would not.
        let term = format!(r#"a="{}""#, "v".repeat(27));
        let text = vec![term; 120].join("or ");
        assert_eq!(text.len(), 120 * 31 + 119 * 3);
        assert!(text.len() <= MAX_POLICY_LEN);
        let canonical = 120 * 33 + 119 * 4;
        let e = err(&text);
        assert_eq!(
            e,
            PolicyError::CanonicalTooLong {
                len: canonical,
                max: MAX_POLICY_LEN
            }
        );
        assert_eq!(
            e.to_string(),
            format!(
                "policy is {canonical} bytes long once written with spaces around its \
                 operators; at most 4096 are allowed (shorten it)"
            )
        );
        assert_eq!(e.position(), None);
    }

    #[test]
    fn error_empty() {
        for text in ["", "   ", "\n\t "] {
            let e = err(text);
            assert_eq!(e, PolicyError::Empty);
            assert_eq!(
                e.to_string(),
                r#"empty policy; write one like component = "db", or true to admit every authenticated peer"#
            );
        }
    }

    #[test]
    fn error_invalid_character() {
        assert_eq!(
            err_at(r#"a = "1" && b = "2""#),
            (
                "at column 9: unexpected character '&' (U+0026); names use letters, digits, '-', \
                 '_' and '.', values are double-quoted, operators are =, != and in"
                    .to_owned(),
                Some((1, 9))
            )
        );
        // A lone '!' is not "!=".
        let (msg, at) = err_at(r#"! a = "1""#);
        assert!(
            msg.starts_with("at column 1: unexpected character '!' (U+0021)"),
            "{msg}"
        );
        assert_eq!(at, Some((1, 1)));
        // Columns count characters, not bytes; non-breaking space is not whitespace here.
        let (msg, at) = err_at("é = \"1\"");
        assert!(
            msg.starts_with("at column 1: unexpected character 'é' (U+00E9)"),
            "{msg}"
        );
        assert_eq!(at, Some((1, 1)));
        let (msg, at) = err_at("a =\u{a0}\"1\"");
        assert!(msg.contains("(U+00A0)"), "{msg}");
        assert_eq!(at, Some((1, 4)));
        // Single quotes are not strings.
        let (msg, _) = err_at("a = 'db'");
        assert!(
            msg.starts_with("at column 5: unexpected character '\\''"),
            "{msg}"
        );
    }

    #[test]
    fn error_unterminated_string() {
        assert_eq!(
            err_at(r#"component = "db and location = sf"#),
            (
                "at column 13: this string has no closing '\"'".to_owned(),
                Some((1, 13))
            )
        );
        // An escaped quote does not close the string, nor does a trailing backslash.
        assert_eq!(err_at(r#"a = "x\""#).1, Some((1, 5)));
        assert_eq!(err_at(r#"a = "x\"#).1, Some((1, 5)));
    }

    #[test]
    fn error_invalid_escape() {
        assert_eq!(
            err_at(r#"a = "x\n""#),
            (
                r#"at column 7: invalid escape '\n' in a string; only \" and \\ are allowed"#
                    .to_owned(),
                Some((1, 7))
            )
        );
        // An escaped control character is shown escaped.
        let (msg, _) = err_at("a = \"\\\u{7}\"");
        assert!(msg.contains(r"invalid escape '\\u{7}'"), "{msg}");
    }

    #[test]
    fn error_control_character_in_string() {
        assert_eq!(
            err_at("a = \"one\ntwo\""),
            (
                "at column 9: control character U+000A in a string; attribute values cannot \
                 contain control characters"
                    .to_owned(),
                Some((1, 9))
            )
        );
        assert_eq!(err_at("a = \"\u{1b}[31m\"").1, Some((1, 6)));
    }

    #[test]
    fn error_expected_expression() {
        assert_eq!(
            err_at(r#"and a = "1""#),
            (
                r#"at column 1: expected a comparison (like component = "db"), "(", "not", "true" or "false", found "and""#
                    .to_owned(),
                Some((1, 1))
            )
        );
        assert_eq!(
            err_at(r#"a = "1" or"#).0,
            r#"at column 11: expected a comparison (like component = "db"), "(", "not", "true" or "false", found the end of the policy"#
        );
        assert_eq!(
            err_at(r#""db""#).0.split(", found ").nth(1),
            Some(r#"the string "db""#)
        );
        assert_eq!(err_at(r#"not )"#).1, Some((1, 5)));
        assert_eq!(err_at(r#"()"#).1, Some((1, 2)));
    }

    #[test]
    fn error_expected_operator() {
        assert_eq!(
            err_at(r#"component "db""#),
            (
                r#"at column 11: expected "=", "!=" or "in" after attribute name "component", found the string "db""#
                    .to_owned(),
                Some((1, 11))
            )
        );
        assert_eq!(
            err_at("component db").0,
            r#"at column 11: expected "=", "!=" or "in" after attribute name "component", found "db""#
        );
        assert_eq!(
            err_at("identifier").0,
            r#"at column 11: expected "=", "!=" or "in" after "identifier", found the end of the policy"#
        );
    }

    #[test]
    fn error_expected_value() {
        assert_eq!(
            err_at("component = db"),
            (
                r#"at column 13: expected a double-quoted value like "db", found "db""#.to_owned(),
                Some((1, 13))
            )
        );
        assert_eq!(
            err_at(r#"a == "1""#).0,
            r#"at column 4: expected a double-quoted value like "db", found "=""#
        );
        // Inside a list too, including an empty list and a trailing comma.
        assert_eq!(err_at(r#"a in []"#).1, Some((1, 7)));
        assert_eq!(err_at(r#"a in ["1",]"#).1, Some((1, 11)));
    }

    #[test]
    fn error_expected_list() {
        assert_eq!(
            err_at(r#"a in "1""#),
            (
                r#"at column 6: expected "[" to start the list of values after "in", found the string "1""#
                    .to_owned(),
                Some((1, 6))
            )
        );
    }

    #[test]
    fn error_expected_list_separator() {
        assert_eq!(
            err_at(r#"a in ["1" "2"]"#),
            (
                r#"at column 11: expected "," or "]" after a value in the list, found the string "2""#
                    .to_owned(),
                Some((1, 11))
            )
        );
        assert_eq!(err_at(r#"a in ["1""#).1, Some((1, 10)));
    }

    #[test]
    fn error_unclosed_paren() {
        assert_eq!(
            err_at(r#"(a = "1" or b = "2""#),
            (
                r#"at column 20: expected ")" to close the "(" at column 1, found the end of the policy"#
                    .to_owned(),
                Some((1, 20))
            )
        );
        assert_eq!(
            err_at("(\n(a = \"1\" b").0,
            r#"at line 2, column 10: expected ")" to close the "(" at line 2, column 1, found "b""#
        );
    }

    #[test]
    fn error_trailing_input() {
        assert_eq!(
            err_at(r#"a = "1")"#),
            (
                r#"at column 8: expected "and", "or" or the end of the policy, found ")""#
                    .to_owned(),
                Some((1, 8))
            )
        );
        assert_eq!(err_at(r#"true = "1""#).1, Some((1, 6)));
    }

    #[test]
    fn error_too_deep() {
        let at_limit = format!(
            "{}true{}",
            "(".repeat(MAX_POLICY_DEPTH),
            ")".repeat(MAX_POLICY_DEPTH)
        );
        assert_eq!(parse(&at_limit), parse("true"));
        let over = format!(
            "{}true{}",
            "(".repeat(MAX_POLICY_DEPTH + 1),
            ")".repeat(MAX_POLICY_DEPTH + 1)
        );
        assert_eq!(
            err_at(&over),
            (
                r#"at column 33: more than 32 levels of nested parentheses and "not"; simplify the policy"#
                    .to_owned(),
                Some((1, 33))
            )
        );
        // `not` counts as a level, and mixes with parentheses.
        let nots = format!("{}true", "not ".repeat(MAX_POLICY_DEPTH));
        parse(&nots);
        assert_eq!(err_at(&format!("not {nots}")).1, Some((1, 129)));
        assert_eq!(
            err_at(&format!("{}true", "not (".repeat(17))).1,
            Some((1, 81))
        );
    }

    #[test]
    fn policy_at_the_depth_limit_round_trips() {
        // Alternating `and`/`or` needs a parenthesis per level, `not` one more.
        let mut text = r#"a = "0""#.to_owned();
        for level in 1..=MAX_POLICY_DEPTH / 2 {
            text = if level % 2 == 0 {
                format!(r#"not (b = "{level}" or {text})"#)
            } else {
                format!(r#"not (b = "{level}" and {text})"#)
            };
        }
        let p = parse(&text);
        assert_eq!(p.to_string(), text);
        assert_eq!(parse(&p.to_string()), p);
        assert!(matches!(
            err(&format!("not {text}")),
            PolicyError::TooDeep { .. }
        ));
    }

    #[test]
    fn deep_nesting_up_to_the_length_limit_is_an_error_not_a_stack_overflow() {
        for open in ["(", "not ", "not (", "(a = \"1\" and "] {
            let n = MAX_POLICY_LEN / open.len();
            let text = open.repeat(n);
            assert!(
                matches!(err(&text), PolicyError::TooDeep { .. }),
                "{open:?} x {n}"
            );
        }
        // Far over the length limit, refused before lexing.
        let huge = "(".repeat(1 << 20);
        assert!(matches!(err(&huge), PolicyError::TooLong { .. }));
    }

    #[test]
    fn error_too_many_terms() {
        let at_limit = vec![r#"a="1""#; MAX_POLICY_TERMS].join(" or ");
        parse(&at_limit);
        let over = vec![r#"a="1""#; MAX_POLICY_TERMS + 1].join(" or ");
        let column = MAX_POLICY_TERMS * 9 + 1;
        assert_eq!(
            err_at(&over),
            (
                format!(
                    "at column {column}: more than 128 terms (comparisons, listed values, true \
                     and false); give the peers an attribute and match on it instead"
                ),
                Some((1, column))
            )
        );
        // Listed values count one each, as do true and false.
        let values = vec![r#""v""#; MAX_POLICY_TERMS].join(",");
        parse(&format!("a in [{values}]"));
        assert!(matches!(
            err(&format!("true and a in [{values}]")),
            PolicyError::TooManyTerms { .. }
        ));
    }

    #[test]
    fn first_error_is_the_leftmost() {
        // The parse error at column 1 wins over the bad character later on.
        assert_eq!(err_at(r#") a = "1" #"#).1, Some((1, 1)));
        // A bad character right after a good prefix is reported at its own place.
        assert_eq!(err_at(r#"a = "1" and #"#).1, Some((1, 13)));
    }

    #[test]
    fn render_points_a_caret_at_the_error() {
        let text = "component db";
        assert_eq!(
            err(text).render(text),
            "at column 11: expected \"=\", \"!=\" or \"in\" after attribute name \"component\", \
             found \"db\"\n  component db\n            ^"
        );
        // On the right line of a multi-line policy, with tabs kept for alignment.
        let text = "a = \"1\" and\n\tb = 2";
        assert_eq!(
            err(text).render(text),
            "at line 2, column 6: expected a double-quoted value like \"db\", found \"2\"\n  \
             \tb = 2\n  \t    ^"
        );
        // At the end of the text.
        let text = "a =";
        assert!(err(text).render(text).ends_with("\n  a =\n     ^"));
        // Control characters are not echoed to the terminal.
        let text = "a = \"\u{1b}[2J\"";
        let shown = err(text).render(text);
        assert!(!shown.contains('\u{1b}'), "{shown:?}");
        assert!(
            shown.ends_with("\n  a = \"\u{FFFD}[2J\"\n       ^"),
            "{shown:?}"
        );
    }

    #[test]
    fn render_with_other_text_does_not_fail() {
        let e = err("(\n(\n(\na");
        for other in ["", "x", "é\n", "\n\n\n\n\n"] {
            let _ = e.render(other);
        }
    }

    #[test]
    fn long_tokens_are_shortened_in_messages() {
        let name = "n".repeat(100);
        let msg = err(&format!("{name} x")).to_string();
        assert!(
            msg.contains(&format!("{:?}", format!("{}…", "n".repeat(32)))),
            "{msg}"
        );
        assert!(msg.len() < 200, "{msg}");
    }

    // Generated policies for the round-trip properties.

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("component".to_owned()),
            Just("location".to_owned()),
            Just("ockam-role".to_owned()),
            "[a-c]",
            "[A-Za-z0-9_.-]{1,12}",
        ]
        .prop_filter("keywords and identifier are not attribute names", |n| {
            !matches!(
                n.as_str(),
                "and" | "or" | "not" | "in" | "true" | "false" | IDENTIFIER
            )
        })
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[0-2]",
            1 => Just(String::new()),
            1 => "[^\\p{Cc}]{0,10}",
            1 => "[\"\\\\a]{0,4}",
        ]
    }

    fn subject() -> impl Strategy<Value = Subject> {
        prop_oneof![
            1 => Just(Subject::Identifier),
            5 => name().prop_map(Subject::Attribute),
        ]
    }

    fn leaf() -> impl Strategy<Value = Expr> {
        prop_oneof![
            1 => Just(Expr::True),
            1 => Just(Expr::False),
            6 => (subject(), prop_oneof![Just(Op::Eq), Just(Op::Ne)], value())
                .prop_map(|(subject, op, value)| Expr::Compare { subject, op, value }),
            2 => (subject(), prop::collection::vec(value(), 1..4))
                .prop_map(|(subject, values)| Expr::In { subject, values }),
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        leaf().prop_recursive(8, 64, 4, |inner| {
            prop_oneof![
                1 => inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                2 => prop::collection::vec(inner.clone(), 2..5).prop_map(|v| Expr::join(v, false)),
                2 => prop::collection::vec(inner, 2..5).prop_map(|v| Expr::join(v, true)),
            ]
        })
    }

    fn terms(e: &Expr) -> usize {
        match e {
            Expr::True | Expr::False | Expr::Compare { .. } => 1,
            Expr::In { values, .. } => values.len(),
            Expr::Not(inner) => terms(inner),
            Expr::And(v) | Expr::Or(v) => v.iter().map(terms).sum(),
        }
    }

    /// Nesting of `(` and `not` in the canonical form, as the parser counts it.
    fn depth(e: &Expr) -> usize {
        let child = |parent_or: bool, c: &Expr| match c {
            Expr::Or(_) if !parent_or => 1 + depth(c),
            _ => depth(c),
        };
        match e {
            Expr::True | Expr::False | Expr::Compare { .. } | Expr::In { .. } => 0,
            Expr::Not(inner) => {
                1 + match **inner {
                    Expr::And(_) | Expr::Or(_) => 1,
                    _ => 0,
                } + depth(inner)
            }
            Expr::And(v) => v.iter().map(|c| child(false, c)).max().unwrap_or(0),
            Expr::Or(v) => v.iter().map(|c| child(true, c)).max().unwrap_or(0),
        }
    }

    fn policy() -> impl Strategy<Value = Policy> {
        expr()
            .prop_map(|expr| Policy { expr })
            .prop_filter("within the parser's bounds", |p| {
                terms(&p.expr) <= MAX_POLICY_TERMS
                    && depth(&p.expr) <= MAX_POLICY_DEPTH
                    && p.to_string().len() <= MAX_POLICY_LEN
            })
    }

    fn attribute_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop_oneof![Just("component".to_owned()), "[a-c]", name()],
            prop_oneof![4 => "[0-2]", 1 => value()],
            0..6,
        )
    }

    fn peer_identifier() -> impl Strategy<Value = String> {
        prop_oneof![Just(ID.to_owned()), "[0-2]", value()]
    }

    /// Fragments of the grammar, so that random text reaches deep into the parser.
    fn fragment() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("and"),
            Just("or"),
            Just("not"),
            Just("in"),
            Just("true"),
            Just("false"),
            Just("identifier"),
            Just("a"),
            Just("("),
            Just(")"),
            Just("["),
            Just("]"),
            Just(","),
            Just("="),
            Just("!="),
            Just("!"),
            Just("\"1\""),
            Just("\""),
            Just("\\"),
            Just(" "),
            Just("\n"),
            Just("é"),
            Just("\u{7}"),
        ]
    }

    fn token_soup() -> impl Strategy<Value = String> {
        prop::collection::vec((fragment(), prop::bool::ANY), 0..60).prop_map(|v| {
            v.into_iter()
                .map(|(p, space)| if space { format!("{p} ") } else { p.to_owned() })
                .collect()
        })
    }

    /// The canonical form of a generated policy with a few fragments inserted or characters
    /// deleted: mostly near-valid text, so that both errors deep in a policy and unusual
    /// accepted spellings are reached.
    fn mutated_policy() -> impl Strategy<Value = String> {
        let edit = (any::<prop::sample::Index>(), prop::option::of(fragment()));
        (policy(), prop::collection::vec(edit, 0..4)).prop_map(|(p, edits)| {
            let mut chars: Vec<char> = p.to_string().chars().collect();
            for (index, insert) in edits {
                let at = index.index(chars.len() + 1);
                match insert {
                    Some(fragment) => {
                        chars.splice(at..at, fragment.chars());
                    }
                    None if at < chars.len() => {
                        chars.remove(at);
                    }
                    None => {}
                }
            }
            chars.into_iter().collect()
        })
    }

    fn check_error_invariants(text: &str, e: &PolicyError) {
        let _ = e.render(text);
        assert!(!e.to_string().is_empty());
        if let Some(at) = e.position() {
            assert!(at.offset <= text.len(), "{at:?} past {}", text.len());
            assert!(text.is_char_boundary(at.offset), "{at:?}");
            assert!(at.line >= 1 && at.column >= 1);
            assert_eq!(Position::of(text, at.offset), at);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(
            text in prop_oneof![
                "\\PC*",
                ".*",
                prop::collection::vec(any::<char>(), 0..64).prop_map(String::from_iter),
            ]
        ) {
            if let Err(e) = Policy::parse(&text) {
                check_error_invariants(&text, &e);
            }
        }

        #[test]
        fn token_soup_never_panics_and_round_trips_when_accepted(
            text in prop_oneof![token_soup(), mutated_policy()]
        ) {
            match Policy::parse(&text) {
                Err(e) => check_error_invariants(&text, &e),
                Ok(p) => {
                    let shown = p.to_string();
                    prop_assert_eq!(Policy::parse(&shown), Ok(p), "{:?} -> {:?}", text, shown);
                }
            }
        }

        #[test]
        fn generated_policies_round_trip_through_display(p in policy()) {
            let shown = p.to_string();
            let again = Policy::parse(&shown);
            prop_assert_eq!(again.as_ref(), Ok(&p), "{}", shown);
            prop_assert_eq!(again.map(|a| a.to_string()), Ok(shown));
        }

        #[test]
        fn round_tripped_policies_evaluate_like_the_original(
            p in policy(),
            maps in prop::collection::vec((peer_identifier(), attribute_map()), 1..8),
        ) {
            let again = Policy::parse(&p.to_string());
            prop_assert!(again.is_ok());
            if let Ok(again) = again {
                for (id, map) in &maps {
                    prop_assert_eq!(again.allows(id, map), p.allows(id, map));
                }
            }
        }

        #[test]
        fn not_of_a_policy_admits_exactly_whom_it_refuses(
            p in policy(),
            maps in prop::collection::vec((peer_identifier(), attribute_map()), 1..8),
        ) {
            let negated = Policy::parse(&format!("not ({p})"));
            if let Ok(negated) = negated {
                for (id, map) in &maps {
                    prop_assert_eq!(negated.allows(id, map), !p.allows(id, map));
                }
            }
        }
    }
}
