//! CEL expressions in policies: `when` conditions and computed `forward.headers`.
//!
//! ```text
//! spec text ─► parse (cel) ─► check: types, known functions, literal regexes ─► cost estimate
//!           ─► Expression (compiled once, with what it reads)
//! request   ─► Inputs (only the claims, headers and query parameters expressions read,
//!              within the evaluation bounds) ─► evaluate ─► bool / string, or an error
//! ```
//!
//! The interpreter (the `cel` crate, with the string and set extensions of `kube-cel`) has no
//! type checker and no cost accounting of its own, so this module adds both:
//! - the checker knows the variables (`claims`, `request`, `source`, `now`) and every function
//!   an expression may call; anything else is refused when the policy compiles, with the
//!   field path, as are type errors it can prove (`request.method + 1`, a header name in upper
//!   case that can never match, a regex that does not compile, a condition that is not a bool);
//! - the cost estimate is a worst case over inputs within the evaluation bounds below
//!   ([`limits`]): one unit per operation, string work per 64 bytes, a comprehension
//!   multiplies its body by the most elements its list can have. An expression over
//!   [`limits::COST`] is refused when the policy compiles;
//! - at request time the inputs are held to the same bounds (a claim list longer than
//!   [`limits::LIST`], a string longer than [`limits::STRING`], more headers or query
//!   parameters than allowed): an expression that would read past them is not evaluated and
//!   fails (a condition denies, a header is removed), so the estimate bounds every evaluation.
//!
//! Inputs are built per request from what the policy's expressions read: a policy whose
//! expressions read `claims.tenant` and `request.headers['x-tenant']` converts one claim and
//! one header, not the whole token and request; the client certificate is parsed only for a
//! policy that reads `source.certificate`.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use kube_cel::cel::common::ast::{
    ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr,
};
use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::{self, Context, ExecutionError, FunctionContext, Program, Value};

use crate::client_cert::ClientCertificate;

/// Bounds of evaluation, and of what the cost estimate assumes.
pub mod limits {
    /// The most an expression may cost (estimated worst case, in units of about one
    /// operation).
    pub const COST: u64 = 1_000_000;
    /// Bytes of any string an expression reads (a claim, a header value, the path).
    pub const STRING: u64 = 64 * 1024;
    /// Elements of a list or entries of an object within the claims.
    pub const LIST: u64 = 1024;
    /// Bytes of the claims an expression reads (their JSON text, about).
    pub const CLAIMS: u64 = 64 * 1024;
    /// Nesting depth of claims objects and lists.
    pub const DEPTH: usize = 32;
    /// Request headers an expression that reads all of them sees.
    pub const HEADERS: u64 = 128;
    /// Query parameters an expression that reads all of them sees.
    pub const QUERY: u64 = 128;
    /// Bytes of an expression's text.
    pub const SOURCE: usize = 4096;
    /// Bytes of a computed header value.
    pub const HEADER_VALUE: usize = 8 * 1024;
    /// Bytes of the client certificate (its PEM text) that are parsed for
    /// `source.certificate`. Each text field of the certificate is then shorter than
    /// [`STRING`], and each of its name lists is held to [`LIST`] names.
    pub const CERTIFICATE: usize = crate::client_cert::MAX_BYTES;
    /// Bytes of the tenant an `admitTenants` expression reads (as `policy::tenants` bounds a
    /// tenant's name).
    pub const TENANT: u64 = 64;
}

/// What an expression computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A condition: a bool.
    Condition,
    /// A header value: a string.
    Header,
    /// Whether an issuer template admits a tenant (`admitTenants`): a bool of `tenant` alone,
    /// the tenant's name from the token's unverified `iss`. Nothing of the token is verified
    /// yet, so `claims`, `request`, `source` and `now` are not variables of it.
    Tenant,
}

/// Which keys of a map an expression reads: named ones, or any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    #[default]
    None,
    Named(BTreeSet<String>),
    All,
}

impl Keys {
    fn add(&mut self, key: &str) {
        match self {
            Keys::None => *self = Keys::Named(BTreeSet::from([key.to_string()])),
            Keys::Named(keys) => {
                keys.insert(key.to_string());
            }
            Keys::All => {}
        }
    }

    fn merge(&mut self, other: &Keys) {
        match other {
            Keys::None => {}
            Keys::All => *self = Keys::All,
            Keys::Named(keys) => keys.iter().for_each(|k| self.add(k)),
        }
    }

    /// Whether `key` is read.
    pub fn wants(&self, key: &str) -> bool {
        match self {
            Keys::None => false,
            Keys::Named(keys) => keys.contains(key),
            Keys::All => true,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Keys::None)
    }
}

/// What one or more expressions read: the inputs a request must provide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub claims: Keys,
    pub method: bool,
    pub host: bool,
    pub path: bool,
    pub headers: Keys,
    pub query: Keys,
    pub source: bool,
    /// `source.certificate` (or all of `source`): the client certificate is parsed.
    pub certificate: bool,
    pub now: bool,
}

impl Reads {
    pub fn merge(&mut self, other: &Reads) {
        self.claims.merge(&other.claims);
        self.method |= other.method;
        self.host |= other.host;
        self.path |= other.path;
        self.headers.merge(&other.headers);
        self.query.merge(&other.query);
        self.source |= other.source;
        self.certificate |= other.certificate;
        self.now |= other.now;
    }

    /// Whether the claims are read at all.
    pub fn claims(&self) -> bool {
        !self.claims.is_none()
    }
}

/// A checked, compiled expression.
pub struct Expression {
    /// The text, as written.
    pub source: Arc<str>,
    program: Program,
    /// What it reads.
    pub reads: Reads,
    /// Estimated worst-case cost.
    pub cost: u64,
    /// The inputs `explain` shows: `claims.tenant`, `request.headers["x-tenant"]`.
    paths: Vec<Vec<String>>,
    /// Literal regular expressions, compiled once.
    regexes: Arc<HashMap<String, regex::Regex>>,
    /// How to evaluate it over the inputs as they are, when every operation it uses has a
    /// plan ([`plan`]); else the interpreter runs it.
    plan: Option<plan::Plan>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.source)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// Why an expression did not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Not CEL.
    #[error("does not parse: {0}")]
    Syntax(String),
    /// A type error, an unknown variable, field or function.
    #[error("{0}")]
    Type(String),
    /// Over the cost limit.
    #[error(
        "may cost up to {cost} units, over the limit of {limit}: a comprehension over a list multiplies its body by up to {list} elements; use `in`, sets.intersects or fewer nested comprehensions",
        limit = limits::COST,
        list = limits::LIST
    )]
    Cost { cost: u64 },
    /// Too long.
    #[error("is {0} bytes long; at most {max} are allowed", max = limits::SOURCE)]
    TooLong(usize),
}

/// Why an evaluation did not produce a value of the expected type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The interpreter failed: no such key, a division by zero, an overflow.
    #[error("evaluation failed: {0}")]
    Failed(String),
    /// A value of another type than expected.
    #[error("evaluated to {0}, not a {1}")]
    Type(&'static str, &'static str),
    /// An input is outside the evaluation bounds, or cannot be read unambiguously.
    #[error("{0}")]
    Input(String),
}

// ---------------------------------------------------------------------------------------
// Types and shapes for the checker and the cost estimate.

#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    List(Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
    Request,
    Source,
    Certificate,
}

/// A type with the most bytes (strings) or elements (lists, maps) its values can have, and
/// the most bytes of content all of it can have (`total`): the elements of a claims list
/// share the bound of the whole claims, so comparing each costs in sum what one pass costs.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    ty: Ty,
    len: u64,
    total: u64,
}

impl Shape {
    fn of(ty: Ty) -> Shape {
        Shape {
            ty,
            len: 0,
            total: 8,
        }
    }
    fn string(len: u64) -> Shape {
        Shape {
            ty: Ty::String,
            len,
            total: len,
        }
    }
    fn list(elem: Shape, len: u64) -> Shape {
        let total = len.saturating_mul(elem.total.max(1));
        Shape {
            ty: Ty::List(Box::new(elem)),
            len,
            total,
        }
    }
    fn map(key: Shape, value: Shape, len: u64) -> Shape {
        let total = len.saturating_mul(key.total.saturating_add(value.total).max(1));
        Shape {
            ty: Ty::Map(Box::new(key), Box::new(value)),
            len,
            total,
        }
    }
    /// A value from the claims, of any JSON type within the bounds.
    fn dyn_() -> Shape {
        Shape {
            ty: Ty::Dyn,
            len: limits::STRING,
            total: limits::CLAIMS,
        }
    }
    fn with_total(mut self, total: u64) -> Shape {
        self.total = self.total.min(total);
        self
    }
    /// Elements of a list or map (a `dyn` may be a list as long as the bounds allow).
    fn elements(&self) -> u64 {
        match self.ty {
            Ty::Dyn => self.len.min(limits::LIST),
            _ => self.len,
        }
    }
    /// Bytes of a string.
    fn bytes(&self) -> u64 {
        match self.ty {
            Ty::String | Ty::Bytes | Ty::Dyn => self.len,
            _ => 8,
        }
    }
    fn is(&self, ty: &Ty) -> bool {
        self.ty == Ty::Dyn || std::mem::discriminant(&self.ty) == std::mem::discriminant(ty)
    }
    fn is_numeric(&self) -> bool {
        matches!(self.ty, Ty::Dyn | Ty::Int | Ty::Uint | Ty::Double)
    }
    fn elem(&self) -> Shape {
        match &self.ty {
            Ty::List(elem) => (**elem).clone(),
            Ty::Map(key, _) => (**key).clone(),
            _ => Shape::dyn_(),
        }
    }
}

fn describe(ty: &Ty) -> String {
    match ty {
        Ty::Dyn => "dyn".into(),
        Ty::Null => "null".into(),
        Ty::Bool => "bool".into(),
        Ty::Int => "int".into(),
        Ty::Uint => "uint".into(),
        Ty::Double => "double".into(),
        Ty::String => "string".into(),
        Ty::Bytes => "bytes".into(),
        Ty::Timestamp => "timestamp".into(),
        Ty::Duration => "duration".into(),
        Ty::List(elem) => format!("list({})", describe(&elem.ty)),
        Ty::Map(key, value) => format!("map({}, {})", describe(&key.ty), describe(&value.ty)),
        Ty::Request => "request".into(),
        Ty::Source => "source".into(),
        Ty::Certificate => "certificate".into(),
    }
}

/// The one type two shapes share, or `dyn`.
fn unify(a: &Shape, b: &Shape) -> Shape {
    let len = a.len.max(b.len);
    let total = a.total.max(b.total);
    let ty = match (&a.ty, &b.ty) {
        (x, y) if x == y => x.clone(),
        (Ty::List(x), Ty::List(y)) => Ty::List(Box::new(unify(x, y))),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => {
            Ty::Map(Box::new(unify(k1, k2)), Box::new(unify(v1, v2)))
        }
        (Ty::Null, other) | (other, Ty::Null) => other.clone(),
        _ => Ty::Dyn,
    };
    Shape { ty, len, total }
}

/// Whether `==` between the two can ever be true (CEL compares numbers across types).
fn comparable(a: &Shape, b: &Shape) -> bool {
    match (&a.ty, &b.ty) {
        (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null) => true,
        (x, y) if a.is_numeric() && b.is_numeric() => {
            let _ = (x, y);
            true
        }
        (Ty::List(x), Ty::List(y)) => comparable(x, y),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => comparable(k1, k2) && comparable(v1, v2),
        (x, y) => std::mem::discriminant(x) == std::mem::discriminant(y),
    }
}

const REQUEST_FIELDS: [&str; 5] = ["method", "host", "path", "headers", "query"];
const SOURCE_FIELDS: [&str; 3] = ["address", "principal", "certificate"];
const CERTIFICATE_FIELDS: [&str; 11] = [
    "subject",
    "issuer",
    "dnsNames",
    "uris",
    "emails",
    "ips",
    "fingerprint",
    "thumbprint",
    "notBefore",
    "notAfter",
    "serial",
];

fn request_field(field: &str) -> Option<Shape> {
    Some(match field {
        "method" => Shape::string(64),
        "host" => Shape::string(256),
        "path" => Shape::string(limits::STRING),
        "headers" => Shape::map(
            Shape::string(256),
            Shape::string(limits::STRING),
            limits::HEADERS,
        )
        .with_total(limits::STRING),
        "query" => Shape::map(
            Shape::string(limits::STRING),
            Shape::string(limits::STRING),
            limits::QUERY,
        )
        .with_total(limits::STRING),
        _ => return None,
    })
}

fn source_field(field: &str) -> Option<Shape> {
    Some(match field {
        "address" => Shape::string(64),
        "principal" => Shape::string(limits::STRING),
        "certificate" => Shape::of(Ty::Certificate),
        _ => return None,
    })
}

/// The fields of `source.certificate`. Its text is bounded by [`limits::CERTIFICATE`]: a
/// name or a list of names cannot be longer than [`limits::STRING`] (an escaped subject is at
/// most three times, an IP address as text at most three times, the bytes of the DER).
fn certificate_field(field: &str) -> Option<Shape> {
    let names =
        || Shape::list(Shape::string(limits::STRING), limits::LIST).with_total(limits::STRING);
    Some(match field {
        "subject" | "issuer" | "serial" => Shape::string(limits::STRING),
        "dnsNames" | "uris" | "emails" | "ips" => names(),
        "fingerprint" => Shape::string(64),
        "thumbprint" => Shape::string(43),
        "notBefore" | "notAfter" => Shape::of(Ty::Timestamp),
        _ => return None,
    })
}

/// Functions an expression may call, for the error message.
const FUNCTIONS: &str = "size, contains, startsWith, endsWith, matches (a literal pattern), \
    lowerAscii, upperAscii, trim, replace, split, join, substring, indexOf, lastIndexOf, \
    charAt, string, int, uint, double, bytes, timestamp, duration, the timestamp getters \
    (getFullYear, getMonth, getDayOfMonth, getDayOfWeek, getHours, ...), sets.contains, \
    sets.intersects, sets.equivalent, and the macros has, all, exists, exists_one, map, filter";

fn cost_bytes(bytes: u64) -> u64 {
    1 + bytes / 64
}

/// Comparing something of `bytes` bytes with each element of `list`: one unit per element,
/// plus the bytes compared, which the list's content bounds.
fn scan(list: &Shape, bytes: u64) -> u64 {
    let n = list.elements();
    n.saturating_add(n.saturating_mul(bytes).min(list.total) / 64)
}

struct Checker {
    kind: Kind,
    scopes: Vec<(String, Shape)>,
    reads: Reads,
    paths: Vec<Vec<String>>,
    regexes: HashMap<String, regex::Regex>,
}

struct Checked {
    shape: Shape,
    cost: u64,
}

fn ok(shape: Shape, cost: u64) -> Result<Checked, CheckError> {
    Ok(Checked { shape, cost })
}

fn type_error(message: impl Into<String>) -> CheckError {
    CheckError::Type(message.into())
}

impl Checker {
    fn lookup(&self, name: &str) -> Option<Shape> {
        if let Some((_, shape)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
            return Some(shape.clone());
        }
        if self.kind == Kind::Tenant {
            return (name == "tenant").then(|| Shape::string(limits::TENANT));
        }
        Some(match name {
            "claims" => Shape::map(Shape::string(256), Shape::dyn_(), limits::LIST)
                .with_total(limits::CLAIMS),
            "request" => Shape::of(Ty::Request),
            "source" => Shape::of(Ty::Source),
            "now" => Shape::of(Ty::Timestamp),
            _ => return None,
        })
    }

    fn check(&mut self, e: &IdedExpr) -> Result<Checked, CheckError> {
        match &e.expr {
            Expr::Unspecified => Err(type_error("an empty expression")),
            Expr::Literal(literal) => Ok(Checked {
                shape: match literal {
                    LiteralValue::Boolean(_) => Shape::of(Ty::Bool),
                    LiteralValue::Int(_) => Shape::of(Ty::Int),
                    LiteralValue::UInt(_) => Shape::of(Ty::Uint),
                    LiteralValue::Double(_) => Shape::of(Ty::Double),
                    LiteralValue::Null => Shape::of(Ty::Null),
                    LiteralValue::String(s) => Shape::string(s.inner().len() as u64),
                    LiteralValue::Bytes(b) => Shape {
                        ty: Ty::Bytes,
                        len: b.inner().len() as u64,
                        total: b.inner().len() as u64,
                    },
                },
                cost: 1,
            }),
            Expr::Ident(name) => {
                let shape = self.lookup(name).ok_or_else(|| {
                    type_error(match self.kind {
                        Kind::Tenant => format!(
                            "undeclared reference to {name:?}: an admitTenants expression sees only tenant (the tenant's name from the token's iss, before anything of the token is verified)"
                        ),
                        Kind::Condition | Kind::Header => format!(
                            "undeclared reference to {name:?}: the variables are claims, request, source and now"
                        ),
                    })
                })?;
                ok(shape, 1)
            }
            Expr::Select(select) => self.select(select),
            Expr::List(list) => {
                if !list.optional_indices.is_empty() {
                    return Err(type_error("optional list elements are not supported"));
                }
                let mut elem: Option<Shape> = None;
                let mut cost = 1;
                for item in &list.elements {
                    let c = self.check(item)?;
                    cost += c.cost;
                    elem = Some(match elem {
                        None => c.shape,
                        Some(e) => unify(&e, &c.shape),
                    });
                }
                let len = list.elements.len() as u64;
                ok(Shape::list(elem.unwrap_or(Shape::of(Ty::Dyn)), len), cost)
            }
            Expr::Map(map) => {
                let mut key: Option<Shape> = None;
                let mut value: Option<Shape> = None;
                let mut cost = 1;
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err(type_error("message construction is not supported"));
                    };
                    if entry.optional {
                        return Err(type_error("optional map entries are not supported"));
                    }
                    let k = self.check(&entry.key)?;
                    let v = self.check(&entry.value)?;
                    if !matches!(
                        k.shape.ty,
                        Ty::Dyn | Ty::String | Ty::Int | Ty::Uint | Ty::Bool
                    ) {
                        return Err(type_error(format!(
                            "a map key must be a string, int, uint or bool, not {}",
                            describe(&k.shape.ty)
                        )));
                    }
                    cost += k.cost + v.cost;
                    key = Some(key.map_or(k.shape.clone(), |x| unify(&x, &k.shape)));
                    value = Some(value.map_or(v.shape.clone(), |x| unify(&x, &v.shape)));
                }
                ok(
                    Shape::map(
                        key.unwrap_or(Shape::of(Ty::Dyn)),
                        value.unwrap_or(Shape::of(Ty::Dyn)),
                        map.entries.len() as u64,
                    ),
                    cost,
                )
            }
            Expr::Struct(_) => Err(type_error("message construction is not supported")),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Call(call) => {
                // `sets.intersects(a, b)` parses as a call on an identifier `sets`.
                if let Some(t) = &call.target
                    && let Expr::Ident(ns) = &t.expr
                    && ns == "sets"
                    && self.lookup(ns).is_none()
                {
                    return self.call(&format!("sets.{}", call.func_name), None, &call.args);
                }
                let target = match &call.target {
                    Some(t) => Some(self.check(t)?),
                    None => None,
                };
                self.call(&call.func_name, target, &call.args)
            }
        }
    }

    fn select(&mut self, select: &SelectExpr) -> Result<Checked, CheckError> {
        let operand = self.check(&select.operand)?;
        let field = select.field.as_str();
        let shape = match &operand.shape.ty {
            Ty::Request => request_field(field).ok_or_else(|| {
                type_error(format!(
                    "request has no field {field:?} (fields: {})",
                    REQUEST_FIELDS.join(", ")
                ))
            })?,
            Ty::Source => source_field(field).ok_or_else(|| {
                type_error(format!(
                    "source has no field {field:?} (fields: {})",
                    SOURCE_FIELDS.join(", ")
                ))
            })?,
            Ty::Certificate => certificate_field(field).ok_or_else(|| {
                type_error(format!(
                    "source.certificate has no field {field:?} (fields: {})",
                    CERTIFICATE_FIELDS.join(", ")
                ))
            })?,
            Ty::Map(key, value) => {
                if !key.is(&Ty::String) {
                    return Err(type_error(format!(
                        "cannot select .{field} from a map with {} keys",
                        describe(&key.ty)
                    )));
                }
                (**value).clone()
            }
            Ty::Dyn => Shape::dyn_(),
            other => {
                return Err(type_error(format!(
                    "cannot select .{field} from a {}",
                    describe(other)
                )));
            }
        };
        if select.test {
            return ok(Shape::of(Ty::Bool), operand.cost + 1);
        }
        ok(shape, operand.cost + 1)
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Checked, CheckError> {
        if c.iter_var2.is_some() {
            return Err(type_error(
                "two-variable comprehensions are not supported; iterate over keys or elements",
            ));
        }
        let range = self.check(&c.iter_range)?;
        let elem = match &range.shape.ty {
            Ty::List(_) | Ty::Map(..) | Ty::Dyn => range.shape.elem(),
            other => {
                return Err(type_error(format!(
                    "cannot iterate over a {}",
                    describe(other)
                )));
            }
        };
        let iterations = range.shape.elements().max(1);
        let init = self.check(&c.accu_init)?;
        // map/filter accumulate lists of what the step appends; other macros keep a scalar.
        let accu = match &init.shape.ty {
            Ty::List(_) => Shape::list(Shape::dyn_(), iterations),
            _ => init.shape.clone(),
        };
        // The body once with an element of no content (the cost every iteration pays) and
        // once with the largest element: what grows with the element is paid, in sum, at
        // most as often as the range's content holds such elements.
        let empty = Shape {
            len: 0,
            total: 0,
            ..elem.clone()
        };
        let fixed = self.body(c, &accu, empty)?;
        let full = self.body(c, &accu, elem.clone())?;
        let growing = full.saturating_sub(fixed);
        let times = range
            .shape
            .total
            .div_ceil(elem.total.max(1))
            .min(iterations);
        self.scopes.push((c.accu_var.clone(), accu));
        let result = self.check(&c.result);
        self.scopes.pop();
        let result = result?;
        let cost = range
            .cost
            .saturating_add(init.cost)
            .saturating_add(iterations.saturating_mul(fixed))
            .saturating_add(times.saturating_mul(growing))
            .saturating_add(result.cost);
        let shape = match &result.shape.ty {
            Ty::List(elem) => Shape::list((**elem).clone(), iterations),
            _ => result.shape,
        };
        ok(shape, cost)
    }

    /// The cost of one iteration of a comprehension's body with `elem` as its variable.
    fn body(
        &mut self,
        c: &ComprehensionExpr,
        accu: &Shape,
        elem: Shape,
    ) -> Result<u64, CheckError> {
        self.scopes.push((c.accu_var.clone(), accu.clone()));
        self.scopes.push((c.iter_var.clone(), elem));
        let cond = self.check(&c.loop_cond);
        let step = self.check(&c.loop_step);
        self.scopes.truncate(self.scopes.len() - 2);
        Ok(cond?.cost.saturating_add(step?.cost).saturating_add(1))
    }

    fn literal_string(e: &IdedExpr) -> Option<&str> {
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
            _ => None,
        }
    }

    fn call(
        &mut self,
        name: &str,
        target: Option<Checked>,
        args: &[IdedExpr],
    ) -> Result<Checked, CheckError> {
        // Regex patterns must be literals: compiled once, here.
        if name == "matches" {
            let pattern_arg = if target.is_some() {
                args.first()
            } else {
                args.get(1)
            };
            let pattern = pattern_arg.and_then(Self::literal_string).ok_or_else(|| {
                type_error("matches() takes a literal pattern ('^[a-z]+$'), compiled once")
            })?;
            if !self.regexes.contains_key(pattern) {
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| type_error(format!("matches(): {e}")))?;
                self.regexes.insert(pattern.to_string(), re);
            }
        }
        let mut checked = Vec::with_capacity(args.len() + 1);
        let mut cost: u64 = 1;
        if let Some(t) = target {
            cost = cost.saturating_add(t.cost);
            checked.push(t.shape);
        }
        let has_target = checked.len() == 1;
        for arg in args {
            let c = self.check(arg)?;
            cost = cost.saturating_add(c.cost);
            checked.push(c.shape);
        }
        let (shape, extra) = signature(name, has_target, &checked, args)?;
        ok(shape, cost.saturating_add(extra))
    }
}

/// The result and the extra cost of a call, or why it does not type-check.
fn signature(
    name: &str,
    has_target: bool,
    a: &[Shape],
    raw: &[IdedExpr],
) -> Result<(Shape, u64), CheckError> {
    let arity = |n: usize| -> Result<(), CheckError> {
        if a.len() == n {
            Ok(())
        } else {
            Err(type_error(format!(
                "{name}() takes {} argument(s), not {}",
                n - usize::from(has_target),
                a.len() - usize::from(has_target)
            )))
        }
    };
    let want = |i: usize, ty: Ty, what: &str| -> Result<(), CheckError> {
        if a[i].is(&ty) {
            Ok(())
        } else {
            Err(type_error(format!(
                "{name}() needs {what}, not a {}",
                describe(&a[i].ty)
            )))
        }
    };
    let bool_ = Shape::of(Ty::Bool);
    let int = Shape::of(Ty::Int);
    let numeric = |name: &str| -> Result<(Shape, u64), CheckError> {
        arity(2)?;
        if !(a[0].is_numeric() && a[1].is_numeric()) {
            return Err(type_error(format!(
                "{name} needs numbers, not {} and {}",
                describe(&a[0].ty),
                describe(&a[1].ty)
            )));
        }
        Ok((unify(&a[0], &a[1]), 1))
    };
    match (name, has_target) {
        ("_&&_" | "_||_", false) => {
            arity(2)?;
            want(0, Ty::Bool, "bools")?;
            want(1, Ty::Bool, "bools")?;
            Ok((bool_, 0))
        }
        ("!_", false) => {
            arity(1)?;
            want(0, Ty::Bool, "a bool")?;
            Ok((bool_, 0))
        }
        ("@not_strictly_false", false) => Ok((bool_, 0)),
        ("-_", false) => {
            arity(1)?;
            if !(a[0].is_numeric() || a[0].is(&Ty::Duration)) {
                return Err(type_error(format!(
                    "cannot negate a {}",
                    describe(&a[0].ty)
                )));
            }
            Ok((a[0].clone(), 0))
        }
        ("_?_:_", false) => {
            arity(3)?;
            want(0, Ty::Bool, "a bool condition")?;
            Ok((unify(&a[1], &a[2]), 0))
        }
        ("_==_" | "_!=_", false) => {
            arity(2)?;
            if !comparable(&a[0], &a[1]) {
                return Err(type_error(format!(
                    "comparing a {} with a {} is never true",
                    describe(&a[0].ty),
                    describe(&a[1].ty)
                )));
            }
            Ok((bool_, cost_bytes(a[0].bytes().min(a[1].bytes()))))
        }
        ("_<_" | "_<=_" | "_>_" | "_>=_", false) => {
            arity(2)?;
            let fits = (a[0].is_numeric() && a[1].is_numeric())
                || (comparable(&a[0], &a[1])
                    && [Ty::String, Ty::Bytes, Ty::Bool, Ty::Timestamp, Ty::Duration]
                        .iter()
                        .any(|t| a[0].is(t) && a[1].is(t)));
            if !fits {
                return Err(type_error(format!(
                    "cannot order a {} and a {}",
                    describe(&a[0].ty),
                    describe(&a[1].ty)
                )));
            }
            Ok((bool_, cost_bytes(a[0].bytes().min(a[1].bytes()))))
        }
        ("_+_", false) => {
            arity(2)?;
            match (&a[0].ty, &a[1].ty) {
                (Ty::String, Ty::String) | (Ty::Bytes, Ty::Bytes) => {
                    let len = a[0].len.saturating_add(a[1].len);
                    Ok((
                        Shape {
                            ty: a[0].ty.clone(),
                            len,
                            total: len,
                        },
                        cost_bytes(len),
                    ))
                }
                (Ty::List(x), Ty::List(y)) => {
                    let len = a[0].len.saturating_add(a[1].len);
                    let total = a[0].total.saturating_add(a[1].total);
                    // Copies the elements (reference counts, no deep copy).
                    Ok((
                        Shape::list(unify(x, y), len).with_total(total),
                        1 + len / 16,
                    ))
                }
                (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => {
                    Ok((Shape::of(Ty::Timestamp), 1))
                }
                (Ty::Duration, Ty::Duration) => Ok((Shape::of(Ty::Duration), 1)),
                (Ty::Dyn, _) | (_, Ty::Dyn) => {
                    let len = a[0].len.saturating_add(a[1].len).min(limits::STRING * 2);
                    Ok((
                        Shape {
                            ty: Ty::Dyn,
                            len,
                            total: len,
                        },
                        cost_bytes(len),
                    ))
                }
                _ if a[0].is_numeric() && a[1].is_numeric() => numeric("+"),
                (x, y) => Err(type_error(format!(
                    "cannot add a {} and a {}",
                    describe(x),
                    describe(y)
                ))),
            }
        }
        ("_-_", false) => {
            arity(2)?;
            match (&a[0].ty, &a[1].ty) {
                (Ty::Timestamp, Ty::Timestamp) => Ok((Shape::of(Ty::Duration), 1)),
                (Ty::Timestamp, Ty::Duration) => Ok((Shape::of(Ty::Timestamp), 1)),
                (Ty::Duration, Ty::Duration) => Ok((Shape::of(Ty::Duration), 1)),
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ok((Shape::of(Ty::Dyn), 1)),
                _ => numeric("-"),
            }
        }
        ("_*_" | "_/_" | "_%_", false) => numeric(&name[1..2]),
        ("_[_]", false) => {
            arity(2)?;
            match &a[0].ty {
                Ty::List(elem) => {
                    if !a[1].is(&Ty::Int) && !a[1].is(&Ty::Uint) {
                        return Err(type_error("a list index must be an int"));
                    }
                    Ok(((**elem).clone(), 1))
                }
                Ty::Map(key, value) => {
                    if !comparable(key, &a[1]) {
                        return Err(type_error(format!(
                            "a map with {} keys indexed by a {}",
                            describe(&key.ty),
                            describe(&a[1].ty)
                        )));
                    }
                    Ok(((**value).clone(), cost_bytes(a[1].bytes())))
                }
                Ty::Dyn => Ok((Shape::dyn_(), cost_bytes(a[1].bytes()))),
                other => Err(type_error(format!("cannot index a {}", describe(other)))),
            }
        }
        ("@in", false) => {
            arity(2)?;
            match &a[1].ty {
                Ty::List(elem) => {
                    if !comparable(elem, &a[0]) {
                        return Err(type_error(format!(
                            "a {} is never in a list of {}",
                            describe(&a[0].ty),
                            describe(&elem.ty)
                        )));
                    }
                    Ok((bool_, scan(&a[1], a[0].bytes().min(elem.bytes()))))
                }
                Ty::Map(key, _) => {
                    if !comparable(key, &a[0]) {
                        return Err(type_error(format!(
                            "a {} is never a key of a map with {} keys",
                            describe(&a[0].ty),
                            describe(&key.ty)
                        )));
                    }
                    Ok((bool_, cost_bytes(a[0].bytes())))
                }
                Ty::Dyn => Ok((bool_, scan(&a[1], a[0].bytes()))),
                other => Err(type_error(format!(
                    "`in` needs a list or a map, not a {}",
                    describe(other)
                ))),
            }
        }
        ("size", _) => {
            arity(1)?;
            if ![Ty::String, Ty::Bytes].iter().any(|t| a[0].is(t))
                && !matches!(a[0].ty, Ty::List(_) | Ty::Map(..))
            {
                return Err(type_error(format!("size() of a {}", describe(&a[0].ty))));
            }
            Ok((int, cost_bytes(a[0].bytes())))
        }
        ("contains" | "startsWith" | "endsWith", true) => {
            arity(2)?;
            want(0, Ty::String, "a string target")?;
            want(1, Ty::String, "a string argument")?;
            let work = if name == "contains" {
                a[0].bytes()
            } else {
                a[0].bytes().min(a[1].bytes())
            };
            Ok((bool_, cost_bytes(work)))
        }
        ("matches", _) => {
            arity(2)?;
            want(0, Ty::String, "a string")?;
            Ok((bool_, 1 + a[0].bytes() / 16))
        }
        ("lowerAscii" | "upperAscii" | "trim", true) => {
            arity(1)?;
            want(0, Ty::String, "a string target")?;
            Ok((Shape::string(a[0].bytes()), cost_bytes(a[0].bytes())))
        }
        ("replace", true) => {
            if a.len() != 3 && a.len() != 4 {
                arity(3)?;
            }
            want(0, Ty::String, "a string target")?;
            want(1, Ty::String, "string arguments")?;
            want(2, Ty::String, "string arguments")?;
            let n = a[0].bytes();
            let len = n
                .saturating_add(1)
                .saturating_mul(a[2].bytes().saturating_add(1))
                .saturating_add(n);
            Ok((Shape::string(len), cost_bytes(len)))
        }
        ("split", true) => {
            if a.len() != 2 && a.len() != 3 {
                arity(2)?;
            }
            want(0, Ty::String, "a string target")?;
            want(1, Ty::String, "a string separator")?;
            let n = a[0].bytes();
            Ok((
                Shape::list(Shape::string(n), n.saturating_add(2).min(limits::LIST)).with_total(n),
                cost_bytes(n).saturating_add(n / 8),
            ))
        }
        ("join", true) => {
            if a.len() != 1 && a.len() != 2 {
                arity(1)?;
            }
            if !matches!(a[0].ty, Ty::List(_) | Ty::Dyn) {
                return Err(type_error("join() needs a list of strings"));
            }
            let elem = a[0].elem();
            if !elem.is(&Ty::String) {
                return Err(type_error("join() needs a list of strings"));
            }
            let sep = a.get(1).map_or(0, Shape::bytes);
            let len = a[0]
                .elements()
                .saturating_mul(elem.bytes().saturating_add(sep));
            Ok((Shape::string(len), cost_bytes(len)))
        }
        ("substring", true) => {
            if a.len() != 2 && a.len() != 3 {
                arity(2)?;
            }
            want(0, Ty::String, "a string target")?;
            for i in 1..a.len() {
                want(i, Ty::Int, "int positions")?;
            }
            Ok((Shape::string(a[0].bytes()), cost_bytes(a[0].bytes())))
        }
        ("indexOf" | "lastIndexOf", true) => {
            if a.len() != 2 && a.len() != 3 {
                arity(2)?;
            }
            want(0, Ty::String, "a string target")?;
            want(1, Ty::String, "a string argument")?;
            Ok((int, cost_bytes(a[0].bytes())))
        }
        ("charAt", true) => {
            arity(2)?;
            want(0, Ty::String, "a string target")?;
            want(1, Ty::Int, "an int position")?;
            Ok((Shape::string(4), cost_bytes(a[0].bytes())))
        }
        ("string", false) => {
            arity(1)?;
            Ok((
                Shape::string(a[0].bytes().max(32)),
                cost_bytes(a[0].bytes()),
            ))
        }
        ("int" | "uint" | "double", false) => {
            arity(1)?;
            let ty = match name {
                "int" => Ty::Int,
                "uint" => Ty::Uint,
                _ => Ty::Double,
            };
            Ok((Shape::of(ty), 1))
        }
        ("bytes", false) => {
            arity(1)?;
            want(0, Ty::String, "a string")?;
            Ok((
                Shape {
                    ty: Ty::Bytes,
                    len: a[0].bytes(),
                    total: a[0].bytes(),
                },
                cost_bytes(a[0].bytes()),
            ))
        }
        ("timestamp", false)
            if a.len() == 1 && (a[0].is(&Ty::Int) || a[0].is(&Ty::Uint)) && a[0].ty != Ty::Dyn =>
        {
            Ok((Shape::of(Ty::Timestamp), 1))
        }
        ("timestamp" | "duration", false) => {
            arity(1)?;
            if name == "timestamp" && a[0].ty == Ty::Dyn {
                // A claim: seconds since the epoch (`exp`) or an RFC 3339 string.
                return Ok((Shape::of(Ty::Timestamp), 1));
            }
            want(0, Ty::String, "a string")?;
            // A literal is checked now; a computed one fails at evaluation if malformed.
            if let Some(text) = raw.first().and_then(Checker::literal_string) {
                let valid = if name == "timestamp" {
                    chrono::DateTime::parse_from_rfc3339(text).is_ok()
                } else {
                    Program::compile(&format!("duration('{text}')"))
                        .ok()
                        .and_then(|p| p.execute(&Context::default()).ok())
                        .is_some()
                };
                if !valid {
                    return Err(type_error(format!(
                        "{name}({text:?}) is not a valid {name}"
                    )));
                }
            }
            let ty = if name == "timestamp" {
                Ty::Timestamp
            } else {
                Ty::Duration
            };
            Ok((Shape::of(ty), 1))
        }
        (
            "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
            | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds",
            true,
        ) => {
            if a.len() != 1 && a.len() != 2 {
                arity(1)?;
            }
            if !a[0].is(&Ty::Timestamp) && !a[0].is(&Ty::Duration) {
                return Err(type_error(format!(
                    "{name}() needs a timestamp, not a {}",
                    describe(&a[0].ty)
                )));
            }
            if a.len() == 2 {
                want(1, Ty::String, "a time zone string")?;
            }
            Ok((int, 1))
        }
        ("sets.contains" | "sets.intersects" | "sets.equivalent", false) => {
            arity(2)?;
            if let Some(other) = a.iter().find(|s| !matches!(s.ty, Ty::List(_) | Ty::Dyn)) {
                return Err(type_error(format!(
                    "{name}() needs lists, not a {}",
                    describe(&other.ty)
                )));
            }
            let per = cost_bytes(a[0].elem().bytes().min(a[1].elem().bytes()));
            Ok((
                bool_,
                a[0].elements()
                    .saturating_mul(a[1].elements())
                    .saturating_mul(per),
            ))
        }
        _ => Err(type_error(format!(
            "unknown function {}{name}(); expressions may call {FUNCTIONS}",
            if has_target { "." } else { "" }
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// What an expression reads.

/// The variable and literal keys of a chain like `request.headers['x-a']`, if it is one.
fn chain(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(name) if ["claims", "request", "source", "now"].contains(&name.as_str()) => {
            Some(vec![name.clone()])
        }
        Expr::Select(select) if !select.test => {
            let mut path = chain(&select.operand)?;
            path.push(select.field.clone());
            Some(path)
        }
        Expr::Call(call) if call.func_name == "_[_]" && call.target.is_none() => {
            let key = Checker::literal_string(call.args.get(1)?)?;
            let mut path = chain(call.args.first()?)?;
            path.push(key.to_string());
            Some(path)
        }
        _ => None,
    }
}

/// Records what `e` reads into `reads` (and the paths explain shows). Scopes shadowing a
/// variable name (a comprehension variable named `claims`) read nothing.
fn collect(
    e: &IdedExpr,
    shadowed: &mut Vec<String>,
    reads: &mut Reads,
    paths: &mut Vec<Vec<String>>,
) {
    let mut record = |path: &[String], whole_map: bool| {
        if shadowed.iter().any(|s| s == &path[0]) {
            return;
        }
        let key = |i: usize| path.get(i).map(String::as_str);
        match (key(0), key(1)) {
            (Some("claims"), Some(k)) => reads.claims.add(k),
            (Some("claims"), None) => reads.claims = Keys::All,
            (Some("request"), None) => {
                reads.method = true;
                reads.host = true;
                reads.path = true;
                reads.headers = Keys::All;
                reads.query = Keys::All;
            }
            (Some("request"), Some("method")) => reads.method = true,
            (Some("request"), Some("host")) => reads.host = true,
            (Some("request"), Some("path")) => reads.path = true,
            (Some("request"), Some("headers")) => match key(2) {
                Some(h) if !whole_map => reads.headers.add(h),
                _ => reads.headers = Keys::All,
            },
            (Some("request"), Some("query")) => match key(2) {
                Some(q) if !whole_map => reads.query.add(q),
                _ => reads.query = Keys::All,
            },
            (Some("source"), None | Some("certificate")) => {
                reads.source = true;
                reads.certificate = true;
            }
            (Some("source"), _) => reads.source = true,
            (Some("now"), _) => reads.now = true,
            _ => {}
        }
        if !paths.iter().any(|p| p.as_slice() == path) && paths.len() < 16 {
            paths.push(path.to_vec());
        }
    };
    // `has(x.y)` and `'k' in map` read one key.
    match &e.expr {
        Expr::Select(select) if select.test => {
            if let Some(mut path) = chain(&select.operand) {
                path.push(select.field.clone());
                record(&path, false);
                return;
            }
        }
        Expr::Call(call) if call.func_name == "@in" && call.target.is_none() => {
            // Only maps known to be maps: `'admin' in claims.roles` reads a list.
            let is_map = |path: &Vec<String>| {
                matches!(
                    path.iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    ["claims"] | ["request", "headers"] | ["request", "query"]
                )
            };
            if let (Some(key), Some(mut path)) = (
                call.args.first().and_then(Checker::literal_string),
                call.args.get(1).and_then(chain).filter(is_map),
            ) {
                path.push(key.to_string());
                record(&path, false);
                return;
            }
        }
        _ => {}
    }
    if let Some(path) = chain(e) {
        record(&path, false);
        return;
    }
    match &e.expr {
        Expr::Select(select) => collect(&select.operand, shadowed, reads, paths),
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                collect(t, shadowed, reads, paths);
            }
            for arg in &call.args {
                collect(arg, shadowed, reads, paths);
            }
        }
        Expr::List(list) => {
            for item in &list.elements {
                collect(item, shadowed, reads, paths);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    collect(&entry.key, shadowed, reads, paths);
                    collect(&entry.value, shadowed, reads, paths);
                }
            }
        }
        Expr::Comprehension(c) => {
            collect(&c.iter_range, shadowed, reads, paths);
            collect(&c.accu_init, shadowed, reads, paths);
            shadowed.push(c.iter_var.clone());
            shadowed.push(c.accu_var.clone());
            collect(&c.loop_cond, shadowed, reads, paths);
            collect(&c.loop_step, shadowed, reads, paths);
            collect(&c.result, shadowed, reads, paths);
            shadowed.truncate(shadowed.len() - 2);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
    }
}

/// Header names in expressions must be lower case: `request.headers` has lower-case keys, so
/// `request.headers['X-Tenant']` could never match.
fn check_header_names(reads: &Reads) -> Result<(), CheckError> {
    if let Keys::Named(names) = &reads.headers
        && let Some(upper) = names
            .iter()
            .find(|n| n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(type_error(format!(
            "request.headers has lower-case names: write {:?}, not {upper:?}",
            upper.to_ascii_lowercase()
        )));
    }
    Ok(())
}

/// Parses and checks an expression.
pub fn compile(source: &str, kind: Kind) -> Result<Expression, CheckError> {
    if source.len() > limits::SOURCE {
        return Err(CheckError::TooLong(source.len()));
    }
    let program = Program::compile(source).map_err(|e| {
        CheckError::Syntax(e.to_string().lines().take(6).collect::<Vec<_>>().join(" "))
    })?;
    let mut checker = Checker {
        kind,
        scopes: Vec::new(),
        reads: Reads::default(),
        paths: Vec::new(),
        regexes: HashMap::new(),
    };
    let checked = checker.check(program.expression())?;
    let expected = match kind {
        Kind::Condition | Kind::Tenant => Ty::Bool,
        Kind::Header => Ty::String,
    };
    if !checked.shape.is(&expected) {
        return Err(type_error(format!(
            "is a {}, not a {}",
            describe(&checked.shape.ty),
            describe(&expected)
        )));
    }
    if checked.cost > limits::COST {
        return Err(CheckError::Cost { cost: checked.cost });
    }
    let mut reads = std::mem::take(&mut checker.reads);
    let mut paths = std::mem::take(&mut checker.paths);
    collect(
        program.expression(),
        &mut Vec::new(),
        &mut reads,
        &mut paths,
    );
    check_header_names(&reads)?;
    let plan = plan::plan(program.expression());
    Ok(Expression {
        source: source.into(),
        program,
        reads,
        cost: checked.cost,
        paths,
        plan,
        regexes: Arc::new(checker.regexes),
    })
}

// ---------------------------------------------------------------------------------------
// Evaluation.

/// The functions every expression may call, registered once per compiled expression set.
pub struct Environment {
    context: Context<'static>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Environment")
    }
}

impl Environment {
    /// The standard functions, the string and set extensions, and `matches` over the
    /// patterns the expressions compiled.
    pub fn new<'e>(expressions: impl IntoIterator<Item = &'e Expression>) -> Environment {
        use kube_cel::KubeCelExt as _;
        let mut patterns: HashMap<String, regex::Regex> = HashMap::new();
        for e in expressions {
            for (k, v) in e.regexes.iter() {
                patterns.insert(k.clone(), v.clone());
            }
        }
        let patterns = Arc::new(patterns);
        let mut context = Context::default();
        context.register_all();
        let compiled = patterns.clone();
        context.add_function(
            "matches",
            move |ftx: &FunctionContext,
                  cel::extractors::This(this): cel::extractors::This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                match compiled.get(pattern.as_str()) {
                    Some(re) => Ok(re.is_match(&this)),
                    None => {
                        Err(ftx.error("matches(): the pattern was not compiled with the policy"))
                    }
                }
            },
        );
        // split() with at most limits::LIST parts, as the cost estimate assumes.
        context.add_function(
            "split",
            |ftx: &FunctionContext,
             cel::extractors::This(this): cel::extractors::This<Arc<String>>,
             cel::extractors::Arguments(args): cel::extractors::Arguments| {
                let Some(Value::String(separator)) = args.first() else {
                    return Err(ftx.error("split() takes a string separator"));
                };
                let limit = match args.get(1) {
                    None => usize::MAX,
                    Some(Value::Int(n)) if *n < 0 => usize::MAX,
                    Some(Value::Int(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
                    Some(_) => return Err(ftx.error("split() takes an int limit")),
                };
                if limit == 0 {
                    return Ok(Value::List(Arc::new(Vec::new())));
                }
                let mut parts = Vec::new();
                for part in this.splitn(limit, separator.as_str()) {
                    if parts.len() as u64 >= limits::LIST {
                        return Err(ftx.error(format!("split(): more than {} parts", limits::LIST)));
                    }
                    parts.push(string(part));
                }
                Ok(Value::List(Arc::new(parts)))
            },
        );
        // CEL's timestamp() of seconds since the epoch, as time claims (`exp`, `iat`) are.
        context.add_function("timestamp", |ftx: &FunctionContext, value: Value| {
            let seconds = match &value {
                Value::String(text) => {
                    return chrono::DateTime::parse_from_rfc3339(text)
                        .map(Value::Timestamp)
                        .map_err(|e| ftx.error(format!("timestamp(): {e}")));
                }
                Value::Int(i) => *i,
                Value::UInt(u) => i64::try_from(*u).unwrap_or(i64::MAX),
                Value::Float(f) if f.is_finite() => *f as i64,
                _ => return Err(ftx.error("timestamp() takes a string or seconds since the epoch")),
            };
            chrono::DateTime::from_timestamp(seconds, 0)
                .map(|t| Value::Timestamp(t.fixed_offset()))
                .ok_or_else(|| ftx.error("timestamp(): out of range"))
        });
        Environment { context }
    }
}

/// The variables of one request, shared by every expression evaluated for it. Expressions
/// with a plan read the inputs where they are; the interpreter's context (its own copy of
/// every variable) is built only when an expression needs it.
pub struct Scope<'a> {
    environment: &'a Environment,
    inputs: &'a Inputs<'a>,
    context: OnceCell<Context<'a>>,
}

impl Environment {
    /// A scope over the inputs that converted (an expression reading one that did not fails
    /// before it runs).
    pub fn scope<'a>(&'a self, inputs: &'a Inputs<'a>) -> Scope<'a> {
        Scope {
            environment: self,
            inputs,
            context: OnceCell::new(),
        }
    }
}

impl<'a> Scope<'a> {
    /// The inputs, for [`Expression::describe_inputs`].
    pub fn inputs(&self) -> &Inputs<'a> {
        self.inputs
    }

    /// The interpreter's context, built on first use.
    fn context(&self) -> &Context<'a> {
        self.context.get_or_init(|| {
            let values = self.inputs.values();
            let mut context = self.environment.context.new_inner_scope();
            if self.inputs.reads_claims
                && let Ok(claims) = &values.claims
            {
                context.add_variable_from_value("claims", claims.clone());
            }
            if self.inputs.reads_request {
                context.add_variable_from_value("request", values.request.clone());
            }
            if !matches!(values.source, Value::Null) {
                context.add_variable_from_value("source", values.source.clone());
            }
            if !matches!(values.now, Value::Null) {
                context.add_variable_from_value("now", values.now.clone());
            }
            context
        })
    }
}

/// What a request offers expressions, before conversion.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path as judged (normalized, without the query).
    pub path: &'a str,
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub headers: crate::engine::Headers<'a>,
    /// The client's address as the gateway saw it.
    pub address: Option<&'a str>,
    /// The authenticated identity of the client's certificate as the gateway reports it.
    pub principal: Option<&'a str>,
    /// The client's certificate as the gateway sends it (Envoy: URL-encoded PEM), parsed
    /// only when an expression reads `source.certificate`.
    pub certificate: Option<&'a str>,
}

/// The inputs of one request, checked against the evaluation bounds and borrowed from the
/// request and the claims; the interpreter's values are built from them only when an
/// expression without a plan runs.
pub struct Inputs<'a> {
    /// The claims expressions read (`None` when none is read), or why they cannot be.
    claims: Result<Option<ClaimsRead<'a>>, String>,
    method: &'a str,
    host: &'a str,
    path: Option<&'a str>,
    /// The headers read, when they convert.
    headers: Option<Vec<(&'a str, &'a str)>>,
    /// The query parameters read, decoded, when they convert.
    query: Option<Vec<(String, String)>>,
    /// The request's fields that could not be converted, and why: only expressions that read
    /// them fail.
    request_errors: Vec<(&'static str, String)>,
    reads: &'a Reads,
    reads_claims: bool,
    reads_request: bool,
    address: &'a str,
    principal: &'a str,
    /// `source.certificate` when read and sent, or why it cannot be read: expressions that
    /// read it fail.
    certificate: Result<Option<Value>, String>,
    now: Option<chrono::DateTime<chrono::FixedOffset>>,
    values: OnceCell<Values>,
}

/// The claims, and which of them the expressions read.
#[derive(Clone, Copy)]
pub(crate) struct ClaimsRead<'a> {
    pub(crate) map: &'a serde_json::Map<String, serde_json::Value>,
    pub(crate) wanted: &'a Keys,
}

impl<'a> ClaimsRead<'a> {
    /// A claim the expressions read.
    pub(crate) fn get(&self, name: &str) -> Option<&'a serde_json::Value> {
        if self.wanted.wants(name) {
            self.map.get(name)
        } else {
            None
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a String, &'a serde_json::Value)> {
        let wanted = self.wanted;
        self.map.iter().filter(move |(k, _)| wanted.wants(k))
    }
}

/// The inputs as the interpreter takes them.
struct Values {
    claims: Result<Value, String>,
    request: Value,
    source: Value,
    now: Value,
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

fn map(entries: HashMap<Key, Value>) -> Value {
    Value::Map(Map {
        map: Arc::new(entries),
    })
}

/// Checks a claim against the evaluation bounds, charging `budget`.
fn check_json(
    v: &serde_json::Value,
    depth: usize,
    at: &str,
    budget: &mut u64,
) -> Result<(), String> {
    let size = match v {
        serde_json::Value::String(s) => s.len() as u64 + 2,
        _ => 8,
    };
    *budget = budget.checked_sub(size).ok_or_else(|| {
        format!(
            "the claims read are larger than {} bytes (at {at})",
            limits::CLAIMS
        )
    })?;
    if depth > limits::DEPTH {
        return Err(format!(
            "the claim {at} is nested deeper than {}",
            limits::DEPTH
        ));
    }
    match v {
        serde_json::Value::Number(n)
            if n.as_i64().is_none() && n.as_u64().is_none() && n.as_f64().is_none() =>
        {
            return Err(format!("the claim {at} is not a representable number"));
        }
        serde_json::Value::String(s) if s.len() as u64 > limits::STRING => {
            return Err(format!(
                "the claim {at} is longer than {} bytes",
                limits::STRING
            ));
        }
        serde_json::Value::Array(items) => {
            if items.len() as u64 > limits::LIST {
                return Err(format!(
                    "the claim {at} has more than {} elements",
                    limits::LIST
                ));
            }
            for item in items {
                check_json(item, depth + 1, at, budget)?;
            }
        }
        serde_json::Value::Object(members) => {
            if members.len() as u64 > limits::LIST {
                return Err(format!(
                    "the claim {at} has more than {} members",
                    limits::LIST
                ));
            }
            for item in members.values() {
                check_json(item, depth + 1, at, budget)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A checked claim as the interpreter sees it.
fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (_, _, Some(f)) => Value::Float(f),
            // check_json refused it.
            _ => Value::Null,
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_value).collect()))
        }
        serde_json::Value::Object(members) => map(members
            .iter()
            .map(|(k, v)| (key(k), json_value(v)))
            .collect()),
    }
}

/// Form-decodes a query component (`+` is a space, as the frameworks behind gateways read it).
fn decode_query(part: &str) -> Option<String> {
    let spaced = part.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn query_params(raw: Option<&str>, wanted: &Keys) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = decode_query(name) else {
            if matches!(wanted, Keys::All) {
                return Err("a query parameter name is not UTF-8".into());
            }
            continue;
        };
        if !wanted.wants(&name) {
            continue;
        }
        let value = decode_query(value)
            .ok_or_else(|| format!("the query parameter {name:?} is not UTF-8"))?;
        if value.len() as u64 > limits::STRING {
            return Err(format!("the query parameter {name:?} is too long"));
        }
        let count = seen.entry(name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            // The upstream may read either value: an expression cannot judge it.
            return Err(format!(
                "the query parameter {name:?} is sent more than once"
            ));
        }
        if seen.len() as u64 > limits::QUERY {
            return Err(format!("more than {} query parameters", limits::QUERY));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn request_headers<'a>(
    headers: crate::engine::Headers<'a>,
    wanted: &Keys,
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&'a str, &'a str)> = Vec::new();
    let mut error = None;
    let mut bytes = 0u64;
    headers.for_each_borrowed(|name, value| {
        if error.is_some() || !wanted.wants(name) || name.starts_with(':') {
            return;
        }
        bytes += value.len() as u64;
        if bytes > limits::STRING {
            error = Some(format!(
                "the headers read are longer than {} bytes",
                limits::STRING
            ));
        } else if out.len() as u64 >= limits::HEADERS {
            error = Some(format!("more than {} request headers", limits::HEADERS));
        } else if value.len() as u64 > limits::STRING {
            error = Some(format!(
                "the header {name} is longer than {} bytes",
                limits::STRING
            ));
        } else if out.iter().any(|(n, _)| *n == name) {
            error = Some(format!(
                "the header {name} is sent more than once; the upstream may read either"
            ));
        } else {
            out.push((name, value));
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

impl<'a> Inputs<'a> {
    /// Checks what `reads` names: claims (when given: `None` for anonymous requests), the
    /// request, the source and the time.
    pub fn new(
        reads: &'a Reads,
        claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
        request: &RequestView<'a>,
        now: SystemTime,
    ) -> Inputs<'a> {
        let claims = match (claims, &reads.claims) {
            (_, Keys::None) => Ok(None),
            (None, _) => Err("the request carries no token (an anonymous rule)".to_string()),
            (Some(map), wanted) => {
                if matches!(wanted, Keys::All) && map.len() as u64 > limits::LIST {
                    Err(format!("the token has more than {} claims", limits::LIST))
                } else {
                    let read = ClaimsRead { map, wanted };
                    let mut budget = limits::CLAIMS;
                    read.iter()
                        .try_for_each(|(k, v)| check_json(v, 0, k, &mut budget))
                        .map(|()| Some(read))
                }
            }
        };
        let mut request_errors = Vec::new();
        let path = if reads.path && request.path.len() as u64 > limits::STRING {
            request_errors.push(("path", "the path is too long".to_string()));
            None
        } else {
            Some(request.path)
        };
        let headers = if reads.headers.is_none() {
            None
        } else {
            request_headers(request.headers, &reads.headers)
                .map_err(|e| request_errors.push(("headers", e)))
                .ok()
        };
        let query = if reads.query.is_none() {
            None
        } else {
            query_params(request.query, &reads.query)
                .map_err(|e| request_errors.push(("query", e)))
                .ok()
        };
        // No certificate: no `certificate` key, so `has(source.certificate)` is false and
        // reading any of its fields fails (a condition denies, a header is removed).
        let certificate = match request.certificate {
            Some(sent) if reads.certificate => ClientCertificate::from_envoy(sent)
                .map_err(|e| e.to_string())
                .and_then(|c| certificate_value(&c))
                .map(Some),
            _ => Ok(None),
        };
        Inputs {
            claims,
            method: request.method,
            host: request.host,
            path,
            headers,
            query,
            request_errors,
            reads,
            reads_claims: !reads.claims.is_none(),
            reads_request: reads.method
                || reads.host
                || reads.path
                || !reads.headers.is_none()
                || !reads.query.is_none(),
            address: request.address.unwrap_or(""),
            principal: request.principal.unwrap_or(""),
            certificate,
            now: reads.now.then(|| {
                let at: chrono::DateTime<chrono::Utc> = now.into();
                at.fixed_offset()
            }),
            values: OnceCell::new(),
        }
    }

    /// Whether an expression reading `r` may run: not if an input it reads did not convert.
    fn gate(&self, r: &Reads) -> Result<(), EvalError> {
        if !r.claims.is_none()
            && let Err(error) = &self.claims
        {
            return Err(EvalError::Input(error.clone()));
        }
        if r.certificate
            && let Err(error) = &self.certificate
        {
            return Err(EvalError::Input(error.clone()));
        }
        for (field, error) in &self.request_errors {
            let read = match *field {
                "path" => r.path,
                "headers" => !r.headers.is_none(),
                _ => !r.query.is_none(),
            };
            if read {
                return Err(EvalError::Input(error.clone()));
            }
        }
        Ok(())
    }

    /// The interpreter's values, built on first use from what the expressions read.
    fn values(&self) -> &Values {
        self.values.get_or_init(|| {
            let claims = match &self.claims {
                Ok(None) => Ok(map(HashMap::new())),
                Ok(Some(read)) => Ok(map(read
                    .iter()
                    .map(|(k, v)| (key(k), json_value(v)))
                    .collect())),
                Err(e) => Err(e.clone()),
            };
            let reads = self.reads;
            let mut fields = HashMap::new();
            if reads.method {
                fields.insert(key("method"), string(self.method));
            }
            if reads.host {
                fields.insert(key("host"), string(self.host));
            }
            if reads.path
                && let Some(path) = self.path
            {
                fields.insert(key("path"), string(path));
            }
            if let Some(headers) = &self.headers {
                fields.insert(
                    key("headers"),
                    map(headers.iter().map(|(k, v)| (key(k), string(v))).collect()),
                );
            }
            if let Some(query) = &self.query {
                fields.insert(
                    key("query"),
                    map(query.iter().map(|(k, v)| (key(k), string(v))).collect()),
                );
            }
            let source = if reads.source {
                let mut out = HashMap::new();
                out.insert(key("address"), string(self.address));
                out.insert(key("principal"), string(self.principal));
                if let Ok(Some(certificate)) = &self.certificate {
                    out.insert(key("certificate"), certificate.clone());
                }
                map(out)
            } else {
                Value::Null
            };
            Values {
                claims,
                request: map(fields),
                source,
                now: self.now.map_or(Value::Null, Value::Timestamp),
            }
        })
    }
}

/// `source.certificate`: the fields of a parsed client certificate, within the bounds.
fn certificate_value(cert: &ClientCertificate) -> Result<Value, String> {
    let names = |what: &str, names: &[String]| {
        if names.len() as u64 > limits::LIST {
            return Err(format!(
                "the client certificate has more than {} {what}",
                limits::LIST
            ));
        }
        Ok(Value::List(Arc::new(
            names.iter().map(|n| string(n)).collect(),
        )))
    };
    let mut out = HashMap::with_capacity(CERTIFICATE_FIELDS.len());
    out.insert(key("subject"), string(&cert.subject));
    out.insert(key("issuer"), string(&cert.issuer));
    out.insert(key("dnsNames"), names("DNS names", &cert.dns_names)?);
    out.insert(key("uris"), names("URIs", &cert.uris)?);
    out.insert(key("emails"), names("email addresses", &cert.emails)?);
    out.insert(key("ips"), names("IP addresses", &cert.ips)?);
    out.insert(key("fingerprint"), string(&cert.fingerprint()));
    out.insert(key("thumbprint"), string(&cert.thumbprint()));
    out.insert(
        key("notBefore"),
        Value::Timestamp(cert.not_before.fixed_offset()),
    );
    out.insert(
        key("notAfter"),
        Value::Timestamp(cert.not_after.fixed_offset()),
    );
    out.insert(key("serial"), string(&cert.serial));
    Ok(map(out))
}

impl Expression {
    fn run(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        scope.inputs.gate(&self.reads)?;
        self.program
            .execute(scope.context())
            .map_err(|e| EvalError::Failed(bounded(&e.to_string(), 200)))
    }

    /// The result by the plan when it has one and it decides, else by the interpreter. In
    /// debug builds (every test) both run and must agree.
    fn decide<T>(
        &self,
        scope: &Scope<'_>,
        planned: impl Fn(plan::V<'_>) -> Option<T>,
        interpreted: impl Fn(Value) -> Result<T, EvalError>,
    ) -> Result<T, EvalError>
    where
        T: PartialEq + fmt::Debug,
    {
        if let Some(plan) = &self.plan
            && scope.inputs.gate(&self.reads).is_ok()
            && let Ok(value) = plan::eval(plan, scope.inputs, &self.regexes)
            && let Some(out) = planned(value)
        {
            #[cfg(debug_assertions)]
            {
                let by_interpreter = self.run(scope).and_then(&interpreted);
                assert_eq!(
                    by_interpreter.as_ref().ok(),
                    Some(&out),
                    "the plan and the interpreter disagree on {:?}",
                    self.source
                );
            }
            return Ok(out);
        }
        self.run(scope).and_then(interpreted)
    }

    /// A condition's result.
    pub fn condition(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        self.decide(
            scope,
            |v| match v {
                plan::V::Bool(b) => Some(b),
                _ => None,
            },
            |v| match v {
                Value::Bool(b) => Ok(b),
                other => Err(EvalError::Type(type_name(&other), "bool")),
            },
        )
    }

    /// A header value: a string of visible ASCII and spaces, at most
    /// [`limits::HEADER_VALUE`] bytes.
    pub fn header(&self, scope: &Scope<'_>) -> Result<String, EvalError> {
        let value = self.decide(
            scope,
            |v| match v {
                plan::V::Str(s) => Some(s.into_owned()),
                _ => None,
            },
            |v| match v {
                Value::String(s) => Ok(s.to_string()),
                other => Err(EvalError::Type(type_name(&other), "string")),
            },
        )?;
        if value.len() > limits::HEADER_VALUE {
            return Err(EvalError::Input(format!(
                "the value is longer than {} bytes",
                limits::HEADER_VALUE
            )));
        }
        if value
            .bytes()
            .any(|b| !(b == b'\t' || (b' '..=b'~').contains(&b)))
        {
            return Err(EvalError::Input(
                "the value has characters a header cannot carry".into(),
            ));
        }
        Ok(value.trim().to_string())
    }

    /// Whether an `admitTenants` expression ([`Kind::Tenant`]) admits `tenant`; an error counts
    /// as not admitted at the caller, as a condition's does.
    pub fn admits(&self, environment: &Environment, tenant: &str) -> Result<bool, EvalError> {
        if tenant.len() as u64 > limits::TENANT {
            return Err(EvalError::Input(format!(
                "the tenant is longer than {} bytes",
                limits::TENANT
            )));
        }
        let mut context = environment.context.new_inner_scope();
        context.add_variable_from_value("tenant", string(tenant));
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::Type(type_name(&other), "bool")),
            Err(e) => Err(EvalError::Failed(bounded(&e.to_string(), 200))),
        }
    }

    /// The inputs the expression reads, as `explain` shows them.
    pub fn describe_inputs(&self, inputs: &Inputs<'_>) -> String {
        let mut out = Vec::new();
        for path in &self.paths {
            let values = inputs.values();
            let root = match path[0].as_str() {
                "claims" => values.claims.as_ref().ok(),
                "request" => Some(&values.request),
                "source" => Some(&values.source),
                "now" => Some(&values.now),
                _ => None,
            };
            let mut value = root;
            for k in &path[1..] {
                value = match value {
                    Some(Value::Map(m)) => m.map.get(&key(k)),
                    _ => None,
                };
            }
            let name = path
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i == 0 {
                        p.clone()
                    } else if p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        format!(".{p}")
                    } else {
                        format!("[{p:?}]")
                    }
                })
                .collect::<String>();
            let shown = match value {
                Some(v) => bounded(&show(v), 120),
                None => "(absent)".into(),
            };
            out.push(format!("{name} = {shown}"));
        }
        out.join(", ")
    }
}

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Function(..) => "a function",
        Value::Int(_) => "an int",
        Value::UInt(_) => "a uint",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "a bool",
        Value::Duration(_) => "a duration",
        Value::Timestamp(_) => "a timestamp",
        Value::Opaque(_) => "an opaque value",
        Value::Null => "null",
    }
}

/// A value for `explain`, JSON-like.
pub fn show(v: &Value) -> String {
    match v {
        Value::List(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(m) => {
            let mut entries: Vec<String> = m
                .map
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Key::String(s) => format!("{s:?}"),
                        Key::Int(i) => i.to_string(),
                        Key::Uint(u) => u.to_string(),
                        Key::Bool(b) => b.to_string(),
                    };
                    format!("{k}: {}", show(v))
                })
                .collect();
            entries.sort();
            format!("{{{}}}", entries.join(", "))
        }
        Value::String(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => format!("{u}u"),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Timestamp(t) => format!("timestamp({:?})", t.to_rfc3339()),
        Value::Duration(d) => format!("duration(\"{}s\")", d.num_seconds()),
        Value::Bytes(b) => format!("bytes({} bytes)", b.len()),
        Value::Function(..) | Value::Opaque(_) => "(function)".into(),
    }
}

mod plan;

#[cfg(test)]
mod tests;
