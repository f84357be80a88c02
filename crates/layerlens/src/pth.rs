//! PyTorch state dicts (`torch.save(model.state_dict())`) without Python:
//! a bounded pickle reader for the subset state dicts use, and the two file
//! layouts around it (the zip archive of PyTorch >= 1.6 and the legacy
//! stream of older versions).
//!
//! The pickle is never executed. The reader is a small stack machine over the
//! data opcodes a state dict needs (listed in [`OPCODES`]); `GLOBAL` is
//! allowed only for the names in [`ALLOWED_GLOBALS`], each of which the
//! reader interprets itself (`OrderedDict()` is an empty dict,
//! `_rebuild_tensor_v2(...)` a view of a storage, ...). Any other opcode or
//! global is refused by name. Memory is bounded by the file: every length is
//! checked against the bytes that remain before anything is allocated, a
//! storage must fit in the file, containers nest at most [`MAX_DEPTH`]
//! deep, and copying work (memo copies) is bounded by a multiple of the
//! pickle's size.

use layerlens_core::candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;

/// The opcodes the reader accepts (pickle protocols 2 to 4, data only).
pub const OPCODES: &[&str] = &[
    "PROTO",
    "FRAME",
    "STOP",
    "MARK",
    "EMPTY_TUPLE",
    "TUPLE",
    "TUPLE1",
    "TUPLE2",
    "TUPLE3",
    "EMPTY_LIST",
    "LIST",
    "APPEND",
    "APPENDS",
    "EMPTY_DICT",
    "DICT",
    "SETITEM",
    "SETITEMS",
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "BINFLOAT",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINPUT",
    "LONG_BINPUT",
    "MEMOIZE",
    "BINGET",
    "LONG_BINGET",
    "GLOBAL",
    "STACK_GLOBAL",
    "REDUCE",
    "BUILD",
    "BINPERSID",
];

/// The globals a state dict may name (`module.name`); every other is refused.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.ByteStorage",
];

/// The deepest nesting of containers accepted (a state dict needs about 4).
pub const MAX_DEPTH: usize = 64;

/// The magic pickle that starts PyTorch's legacy format (protocol 2, LONG1
/// 0x1950a86a20f9469cfc6c, STOP).
pub(crate) const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

type R<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(DType),
}

fn global(module: &str, name: &str) -> R<Global> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::Storage(DType::F32),
        ("torch", "DoubleStorage") => Global::Storage(DType::F64),
        ("torch", "HalfStorage") => Global::Storage(DType::F16),
        ("torch", "BFloat16Storage") => Global::Storage(DType::BF16),
        ("torch", "LongStorage") => Global::Storage(DType::I64),
        ("torch", "IntStorage") => Global::Storage(DType::I32),
        ("torch", "ShortStorage") => Global::Storage(DType::I16),
        ("torch", "ByteStorage") => Global::Storage(DType::U8),
        _ => {
            return Err(format!(
                "GLOBAL '{}.{}' is not allowed (a state dict needs only {})",
                printable(module),
                printable(name),
                ALLOWED_GLOBALS.join(", ")
            ))
        }
    })
}

/// At most 80 characters of `s`, control characters escaped.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A storage named by a persistent id: its key (the zip entry `data/KEY`, or
/// the legacy key), element type and element count.
#[derive(Debug, PartialEq)]
struct StorageRef {
    key: String,
    dtype: DType,
    numel: usize,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Seq {
    items: Vec<V>,
    depth: usize,
}

#[derive(Debug, Clone)]
struct Map {
    items: Vec<(V, V)>,
    depth: usize,
}

#[derive(Debug, Clone)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    /// Floats appear in state dicts only as hyper-parameters, which are skipped.
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl V {
    fn kind(&self) -> &'static str {
        match self {
            V::None => "None",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Float(_) => "float",
            V::Str(_) => "str",
            V::Tuple(_) => "tuple",
            V::List(_) => "list",
            V::Dict(_) => "dict",
            V::Global(_) => "global",
            V::Storage(_) => "storage",
            V::Tensor(_) => "tensor",
        }
    }

    fn depth(&self) -> usize {
        match self {
            V::Tuple(s) | V::List(s) => s.depth,
            V::Dict(m) => m.depth,
            _ => 0,
        }
    }

    fn int(&self, what: &str) -> R<i64> {
        match self {
            V::Int(i) => Ok(*i),
            V::Bool(b) => Ok(*b as i64),
            other => Err(format!("{what}: expected an int, found a {}", other.kind())),
        }
    }

    fn usize(&self, what: &str) -> R<usize> {
        let i = self.int(what)?;
        usize::try_from(i).map_err(|_| format!("{what}: {i} is negative"))
    }

    fn str(&self, what: &str) -> R<Rc<str>> {
        match self {
            V::Str(s) => Ok(s.clone()),
            other => Err(format!("{what}: expected a str, found a {}", other.kind())),
        }
    }

    fn tuple(&self, what: &str) -> R<&[V]> {
        match self {
            V::Tuple(s) => Ok(&s.items),
            other => Err(format!(
                "{what}: expected a tuple, found a {}",
                other.kind()
            )),
        }
    }

    fn usizes(&self, what: &str) -> R<Vec<usize>> {
        self.tuple(what)?.iter().map(|v| v.usize(what)).collect()
    }
}

fn seq(items: Vec<V>) -> R<Rc<Seq>> {
    let depth = 1 + items.iter().map(V::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("containers nest deeper than {MAX_DEPTH}"));
    }
    Ok(Rc::new(Seq { items, depth }))
}

/// A byte source that knows how much of the file is left, so that no length
/// read from the file can make the reader allocate more than the file holds.
pub(crate) struct Input<T> {
    r: T,
    pos: u64,
    len: u64,
}

impl<T: Read> Input<T> {
    pub(crate) fn new(r: T, len: u64) -> Self {
        Input { r, pos: 0, len }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> R<Vec<u8>> {
        if n > self.remaining() {
            return Err(format!(
                "{what} declares {n} bytes but only {} remain",
                self.remaining()
            ));
        }
        let mut v = Vec::with_capacity(n as usize);
        (&mut self.r)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| format!("{what}: {e}"))?;
        if v.len() as u64 != n {
            return Err(format!(
                "{what}: the file ends after {} of {n} bytes",
                v.len()
            ));
        }
        self.pos += n;
        Ok(v)
    }

    fn array<const N: usize>(&mut self, what: &str) -> R<[u8; N]> {
        let mut a = [0u8; N];
        if (N as u64) > self.remaining() {
            return Err(format!("{what}: the file ends"));
        }
        self.r
            .read_exact(&mut a)
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += N as u64;
        Ok(a)
    }

    fn byte(&mut self, what: &str) -> R<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A `GLOBAL` argument: printable ASCII up to a newline, at most 256 bytes.
    fn line(&mut self, what: &str) -> R<String> {
        let mut s = String::new();
        loop {
            let b = self.byte(what)?;
            if b == b'\n' {
                return Ok(s);
            }
            if !(0x20..0x7f).contains(&b) || s.len() >= 256 {
                return Err(format!("{what}: not a short line of printable ASCII"));
            }
            s.push(b as char);
        }
    }

    fn string(&mut self, n: u64, what: &str) -> R<Rc<str>> {
        let b = self.bytes(n, what)?;
        String::from_utf8(b)
            .map(Rc::from)
            .map_err(|_| format!("{what}: not UTF-8"))
    }
}

struct Vm {
    stack: Vec<V>,
    /// Stack lengths at each MARK (the marks themselves are not on `stack`).
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    /// Elements copied so far (copy-on-write of shared lists and dicts).
    work: u64,
    work_limit: u64,
}

impl Vm {
    fn pop(&mut self) -> R<V> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("pops past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "pops an empty stack".into())
    }

    fn pop_mark(&mut self) -> R<Vec<V>> {
        let m = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: V) {
        self.stack.push(v)
    }

    fn top(&mut self) -> R<&mut V> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("reads past a MARK".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "reads an empty stack".into())
    }

    fn charge(&mut self, n: usize) -> R<()> {
        self.work += n as u64;
        if self.work > self.work_limit {
            return Err(format!(
                "copies more than {} elements: too complex for a state dict",
                self.work_limit
            ));
        }
        Ok(())
    }

    /// The number of elements a write to `rc` copies (copy-on-write when shared).
    fn copies<X>(rc: &Rc<X>, len: usize) -> usize {
        if Rc::strong_count(rc) > 1 {
            len
        } else {
            0
        }
    }

    /// Appends to the list on top of the stack (copying it first if shared).
    fn extend_list(&mut self, new: Vec<V>) -> R<()> {
        let depth = 1 + new.iter().map(V::depth).max().unwrap_or(0);
        let copy = match self.top()? {
            V::List(l) => Self::copies(l, l.items.len()),
            other => return Err(format!("APPEND to a {}", other.kind())),
        };
        self.charge(copy + new.len())?;
        if let V::List(list) = self.top()? {
            let l = Rc::make_mut(list);
            l.depth = l.depth.max(depth);
            if l.depth > MAX_DEPTH {
                return Err(format!("containers nest deeper than {MAX_DEPTH}"));
            }
            l.items.extend(new);
        }
        Ok(())
    }

    /// Sets items of the dict on top of the stack (copying it first if shared).
    fn extend_dict(&mut self, new: Vec<V>) -> R<()> {
        if !new.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of objects".into());
        }
        let depth = 1 + new.iter().map(V::depth).max().unwrap_or(0);
        let copy = match self.top()? {
            V::Dict(d) => Self::copies(d, d.items.len()),
            other => return Err(format!("SETITEM on a {}", other.kind())),
        };
        self.charge(copy + new.len())?;
        if let V::Dict(dict) = self.top()? {
            let d = Rc::make_mut(dict);
            d.depth = d.depth.max(depth);
            if d.depth > MAX_DEPTH {
                return Err(format!("containers nest deeper than {MAX_DEPTH}"));
            }
            let mut it = new.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.items.push((k, v));
            }
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> R<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> R<()> {
        let v = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("memo {id} was never stored"))?;
        self.push(v);
        Ok(())
    }

    fn reduce(&mut self, callable: V, args: V) -> R<V> {
        let V::Global(g) = callable else {
            return Err(format!("REDUCE calls a {}", callable.kind()));
        };
        let args = args.tuple("REDUCE arguments")?;
        match g {
            Global::OrderedDict if args.is_empty() => Ok(V::Dict(Rc::new(Map {
                items: Vec::new(),
                depth: 1,
            }))),
            Global::OrderedDict => Err("OrderedDict(...) with arguments".into()),
            Global::RebuildTensorV2 => {
                if !(6..=7).contains(&args.len()) {
                    return Err(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    ));
                }
                let V::Storage(storage) = &args[0] else {
                    return Err(format!(
                        "_rebuild_tensor_v2 of a {}, not a storage",
                        args[0].kind()
                    ));
                };
                let size = args[2].usizes("tensor size")?;
                let stride = args[3].usizes("tensor stride")?;
                if size.len() != stride.len() {
                    return Err(format!(
                        "tensor size {size:?} and stride {stride:?} differ in rank"
                    ));
                }
                Ok(V::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: args[1].usize("storage offset")?,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter => match args.first() {
                Some(t @ V::Tensor(_)) if args.len() == 3 => Ok(t.clone()),
                _ => Err("_rebuild_parameter takes (tensor, requires_grad, hooks)".into()),
            },
            Global::Storage(_) => Err("REDUCE calls a storage type".into()),
        }
    }

    /// `persistent_load(pid)`: only `('storage', type, key, location, numel[, None])`.
    fn persistent(&self, pid: V) -> R<V> {
        let t = pid.tuple("persistent id")?;
        let tag = t.first().map(|v| v.str("persistent id tag")).transpose()?;
        if tag.as_deref() != Some("storage") || !(5..=6).contains(&t.len()) {
            return Err("a persistent id that is not a storage reference".into());
        }
        let V::Global(Global::Storage(dtype)) = t[1] else {
            return Err(format!("a storage of type {}", t[1].kind()));
        };
        if t.len() == 6 && !matches!(t[5], V::None) {
            return Err("storage views (legacy view metadata) are not supported".into());
        }
        t[3].str("storage location")?;
        Ok(V::Storage(Rc::new(StorageRef {
            key: t[2].str("storage key")?.to_string(),
            dtype,
            numel: t[4].usize("storage size")?,
        })))
    }

    fn step<T: Read>(&mut self, op: u8, r: &mut Input<T>) -> R<bool> {
        match op {
            0x80 => {
                let v = r.byte("PROTO")?;
                if v > 5 {
                    return Err(format!("pickle protocol {v}"));
                }
            }
            0x95 => {
                let n = u64::from_le_bytes(r.array("FRAME")?);
                if n > r.remaining() {
                    return Err(format!("FRAME of {n} bytes past the end"));
                }
            }
            b'.' => return Ok(true),
            b'(' => self.marks.push(self.stack.len()),
            b')' => self.push(V::Tuple(seq(Vec::new())?)),
            b't' => {
                let items = self.pop_mark()?;
                self.push(V::Tuple(seq(items)?))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(V::Tuple(seq(items)?))
            }
            b']' => self.push(V::List(seq(Vec::new())?)),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(V::List(seq(items)?))
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            b'}' => self.push(V::Dict(Rc::new(Map {
                items: Vec::new(),
                depth: 1,
            }))),
            b'd' => {
                let items = self.pop_mark()?;
                self.push(V::Dict(Rc::new(Map {
                    items: Vec::new(),
                    depth: 1,
                })));
                self.extend_dict(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items)?
            }
            b'N' => self.push(V::None),
            0x88 => self.push(V::Bool(true)),
            0x89 => self.push(V::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(r.array("BININT")?);
                self.push(V::Int(v as i64))
            }
            b'K' => {
                let v = r.byte("BININT1")?;
                self.push(V::Int(v as i64))
            }
            b'M' => {
                let v = u16::from_le_bytes(r.array("BININT2")?);
                self.push(V::Int(v as i64))
            }
            0x8a => {
                let n = r.byte("LONG1")? as usize;
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes (more than 64 bits)"));
                }
                let b = r.bytes(n as u64, "LONG1")?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                // Two's complement: sign-extend from the last byte.
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v |= -1i64 << (8 * n);
                }
                self.push(V::Int(v))
            }
            b'G' => {
                let v = f64::from_be_bytes(r.array("BINFLOAT")?);
                self.push(V::Float(v))
            }
            b'X' => {
                let n = u32::from_le_bytes(r.array("BINUNICODE")?);
                let s = r.string(n as u64, "BINUNICODE")?;
                self.push(V::Str(s))
            }
            0x8c => {
                let n = r.byte("SHORT_BINUNICODE")?;
                let s = r.string(n as u64, "SHORT_BINUNICODE")?;
                self.push(V::Str(s))
            }
            b'q' => {
                let id = r.byte("BINPUT")?;
                self.memo_put(id as u32)?
            }
            b'r' => {
                let id = u32::from_le_bytes(r.array("LONG_BINPUT")?);
                self.memo_put(id)?
            }
            0x94 => {
                let id = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memo_put(id)?
            }
            b'h' => {
                let id = r.byte("BINGET")?;
                self.memo_get(id as u32)?
            }
            b'j' => {
                let id = u32::from_le_bytes(r.array("LONG_BINGET")?);
                self.memo_get(id)?
            }
            b'c' => {
                let module = r.line("GLOBAL module")?;
                let name = r.line("GLOBAL name")?;
                self.push(V::Global(global(&module, &name)?))
            }
            0x93 => {
                let name = self.pop()?.str("STACK_GLOBAL name")?;
                let module = self.pop()?.str("STACK_GLOBAL module")?;
                self.push(V::Global(global(&module, &name)?))
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.reduce(callable, args)?;
                self.push(v)
            }
            b'b' => {
                // Instance state (an OrderedDict's `_metadata`): not needed, dropped.
                let _state = self.pop()?;
                let top = self.top()?;
                if !matches!(top, V::Dict(_)) {
                    return Err(format!("BUILD of a {}", top.kind()));
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(pid)?;
                self.push(v)
            }
            other => return Err(opcode_error(other)),
        }
        Ok(false)
    }
}

fn opcode_error(op: u8) -> String {
    let name = match op {
        b'i' => Some("INST"),
        b'o' => Some("OBJ"),
        0x81 => Some("NEWOBJ"),
        0x92 => Some("NEWOBJ_EX"),
        b'P' => Some("PERSID"),
        b'I' => Some("INT"),
        b'L' => Some("LONG"),
        b'F' => Some("FLOAT"),
        b'S' => Some("STRING"),
        b'V' => Some("UNICODE"),
        b'T' => Some("BINSTRING"),
        b'U' => Some("SHORT_BINSTRING"),
        b'B' => Some("BINBYTES"),
        b'C' => Some("SHORT_BINBYTES"),
        0x8b => Some("LONG4"),
        0x8d => Some("BINUNICODE8"),
        0x8e => Some("BINBYTES8"),
        0x8f => Some("EMPTY_SET"),
        0x90 => Some("ADDITEMS"),
        0x91 => Some("FROZENSET"),
        0x82..=0x84 => Some("EXT"),
        b'0' | b'1' | b'2' => Some("POP/DUP"),
        b'g' | b'p' => Some("GET/PUT (text)"),
        _ => None,
    };
    match name {
        Some(n) => format!("opcode {n} (0x{op:02x}) is not allowed in a state dict"),
        None => format!("unknown opcode 0x{op:02x}"),
    }
}

/// Runs one pickle (up to its STOP) from `r`; `what` names it in errors.
fn run_pickle<T: Read>(r: &mut Input<T>, what: &str) -> R<V> {
    let start = r.pos;
    let mut vm = Vm {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work: 0,
        work_limit: 2 * r.remaining() + (1 << 16),
    };
    loop {
        let at = r.pos - start;
        let op = r
            .byte("opcode")
            .map_err(|e| format!("{what} at byte {at}: {e} before STOP"))?;
        match vm.step(op, r) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("{what} at byte {at}: {e}")),
        }
    }
    if vm.stack.len() != 1 || !vm.marks.is_empty() {
        return Err(format!(
            "{what}: {} objects and {} marks left at STOP (one object expected)",
            vm.stack.len(),
            vm.marks.len()
        ));
    }
    Ok(vm.stack.pop().unwrap_or(V::None))
}

/// The tensors of a state dict object: `(name, view)`; non-tensor entries
/// (hyper-parameters, `_metadata`) are skipped, as PyTorch's loader would.
fn state_dict(obj: V) -> R<Vec<(String, Rc<TensorRef>)>> {
    let V::Dict(d) = obj else {
        return Err(format!(
            "the pickled object is a {}, not a state dict",
            obj.kind()
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in &d.items {
        if let (V::Str(k), V::Tensor(t)) = (k, v) {
            out.insert(k.to_string(), t.clone());
        }
    }
    Ok(out.into_iter().collect())
}

fn elem_size(dtype: DType) -> usize {
    dtype.size_in_bytes()
}

/// The tensor `t` views in `storage` (the storage's elements, already read).
/// Any permutation of a contiguous layout is accepted (a transposed Linear
/// weight, Fortran order); other strides are refused.
fn materialise(name: &str, t: &TensorRef, storage: &Tensor) -> R<Tensor> {
    let bad = |m: String| format!("tensor '{}': {m}", printable(name));
    let dims = &t.size;
    let mut count: usize = 1;
    for &d in dims {
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad(format!("size {dims:?} overflows")))?;
    }
    let end = t
        .offset
        .checked_add(count)
        .ok_or_else(|| bad("offset overflows".into()))?;
    if end > t.storage.numel {
        return Err(bad(format!(
            "elements {}..{end} lie outside its storage of {}",
            t.offset, t.storage.numel
        )));
    }
    if count == 0 {
        return Tensor::zeros(dims.as_slice(), t.storage.dtype, &Device::Cpu)
            .map_err(|e| bad(e.to_string()));
    }
    let mut order: Vec<usize> = (0..dims.len()).collect();
    order.sort_by(|&a, &b| t.stride[b].cmp(&t.stride[a]).then(a.cmp(&b)));
    let mut expect = 1usize;
    for &d in order.iter().rev() {
        if dims[d] != 1 && t.stride[d] != expect {
            return Err(bad(format!(
                "unsupported strided layout {:?} for size {dims:?}; re-save it contiguous",
                t.stride
            )));
        }
        // No overflow: the product of all dims is `count`.
        expect *= dims[d];
    }
    let sorted: Vec<usize> = order.iter().map(|&d| dims[d]).collect();
    let mut inverse = vec![0usize; order.len()];
    for (i, &d) in order.iter().enumerate() {
        inverse[d] = i;
    }
    (|| {
        storage
            .narrow(0, t.offset, count)?
            .reshape(sorted)?
            .permute(inverse)?
            .contiguous()
    })()
    .map_err(|e: layerlens_core::candle_core::Error| bad(e.to_string()))
}

/// Builds the tensors from their views and the storages they use.
fn assemble(
    views: Vec<(String, Rc<TensorRef>)>,
    storages: &HashMap<String, Tensor>,
) -> R<Vec<(String, Tensor)>> {
    views
        .into_iter()
        .map(|(name, v)| {
            let s = storages
                .get(&v.storage.key)
                .ok_or_else(|| format!("storage '{}' is missing", printable(&v.storage.key)))?;
            Ok((name.clone(), materialise(&name, &v, s)?))
        })
        .collect()
}

/// Every storage the views use, with one dtype and size each.
fn storage_refs(views: &[(String, Rc<TensorRef>)]) -> R<BTreeMap<String, Rc<StorageRef>>> {
    let mut refs: BTreeMap<String, Rc<StorageRef>> = BTreeMap::new();
    for (_, v) in views {
        let s = &v.storage;
        match refs.get(&s.key) {
            Some(prev) if **prev != **s => {
                return Err(format!(
                    "storage '{}' is declared twice, differently",
                    printable(&s.key)
                ))
            }
            Some(_) => {}
            None => {
                refs.insert(s.key.clone(), s.clone());
            }
        }
    }
    Ok(refs)
}

fn storage_bytes(s: &StorageRef) -> R<u64> {
    (s.numel as u64)
        .checked_mul(elem_size(s.dtype) as u64)
        .ok_or_else(|| format!("storage '{}' size overflows", printable(&s.key)))
}

fn storage_tensor(bytes: &[u8], s: &StorageRef) -> R<Tensor> {
    Tensor::from_raw_buffer(bytes, s.dtype, &[s.numel], &Device::Cpu)
        .map_err(|e| format!("storage '{}': {e}", printable(&s.key)))
}

/// Reads a state dict in either format from `r` (`len` bytes long).
pub(crate) fn read<T: Read + Seek>(mut r: T, len: u64) -> R<Vec<(String, Tensor)>> {
    let mut head = [0u8; LEGACY_MAGIC.len()];
    let n = (&mut r)
        .take(head.len() as u64)
        .read(&mut head)
        .map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    if n == head.len() && head == LEGACY_MAGIC {
        read_legacy(Input::new(std::io::BufReader::new(r), len))
            .map_err(|e| format!("not a readable legacy PyTorch state dict: {e}"))
    } else {
        read_zip(r, len)
            .map_err(|e| format!("not a readable PyTorch state dict (zip + pickle): {e}"))
    }
}

/// PyTorch's legacy serialisation (`torch.save` before 1.6, or with
/// `_use_new_zipfile_serialization=False`): five pickles (magic, protocol,
/// system info, the object, the storage keys) followed by each storage as a
/// little-endian i64 element count and its raw bytes.
fn read_legacy<T: Read>(mut r: Input<T>) -> R<Vec<(String, Tensor)>> {
    r.bytes(LEGACY_MAGIC.len() as u64, "magic number")?;
    match run_pickle(&mut r, "protocol pickle")? {
        V::Int(1001) => {}
        other => return Err(format!("protocol version {other:?}, not 1001")),
    }
    let V::Dict(info) = run_pickle(&mut r, "system-info pickle")? else {
        return Err("the system-info pickle is not a dict".into());
    };
    for (k, v) in &info.items {
        if matches!(k, V::Str(s) if &**s == "little_endian") && !matches!(v, V::Bool(true)) {
            return Err("a big-endian file is not supported".into());
        }
    }
    let views = state_dict(run_pickle(&mut r, "state-dict pickle")?)?;
    let V::List(keys) = run_pickle(&mut r, "storage-keys pickle")? else {
        return Err("the storage-keys pickle is not a list".into());
    };
    let refs = storage_refs(&views)?;
    let mut storages = HashMap::new();
    for key in &keys.items {
        let key = key.str("storage key")?;
        let s = refs
            .get(&*key)
            .ok_or_else(|| format!("storage '{}' is used by no tensor", printable(&key)))?;
        let numel = i64::from_le_bytes(r.array("storage size")?);
        if usize::try_from(numel).ok() != Some(s.numel) {
            return Err(format!(
                "storage '{}' holds {numel} elements but its tensors declare {}",
                printable(&key),
                s.numel
            ));
        }
        let bytes = r.bytes(storage_bytes(s)?, &format!("storage '{}'", printable(&key)))?;
        if storages
            .insert(key.to_string(), storage_tensor(&bytes, s)?)
            .is_some()
        {
            return Err(format!("storage '{}' is listed twice", printable(&key)));
        }
    }
    assemble(views, &storages)
}

/// PyTorch's zip format: `NAME/data.pkl` and one `NAME/data/KEY` entry per
/// storage, stored uncompressed.
fn read_zip<T: Read + Seek>(r: T, len: u64) -> R<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(r).map_err(|e| format!("not a zip archive: {e}"))?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| format!("zip entry names: {e}"))?;
    let pkls: Vec<String> = names
        .into_iter()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .collect();
    let [pkl] = pkls.as_slice() else {
        return Err(format!(
            "expected one NAME/data.pkl entry, found {}",
            pkls.len()
        ));
    };
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut entry = |name: &str, need: Option<u64>| -> R<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| format!("entry {}: {e}", printable(name)))?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(format!(
                "entry {} is compressed (torch.save stores entries uncompressed)",
                printable(name)
            ));
        }
        let size = f.size();
        if size > len {
            return Err(format!(
                "entry {} declares {size} bytes, more than the file's {len}",
                printable(name)
            ));
        }
        let n = match need {
            Some(n) if n > size => {
                return Err(format!(
                    "entry {} holds {size} bytes but its storage declares {n}",
                    printable(name)
                ))
            }
            Some(n) => n,
            None => size,
        };
        Input::new(&mut f, size).bytes(n, &format!("entry {}", printable(name)))
    };
    let pickle = entry(pkl, None)?;
    let plen = pickle.len() as u64;
    let mut input = Input::new(pickle.as_slice(), plen);
    let views = state_dict(run_pickle(&mut input, "data.pkl")?)?;
    let mut storages = HashMap::new();
    for (key, s) in storage_refs(&views)? {
        let bytes = entry(&format!("{prefix}data/{key}"), Some(storage_bytes(&s)?))?;
        storages.insert(key, storage_tensor(&bytes, &s)?);
    }
    assemble(views, &storages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> R<V> {
        run_pickle(&mut Input::new(bytes, bytes.len() as u64), "test")
    }

    #[test]
    fn refuses_globals_outside_the_allow_list_by_name() {
        let e = run(b"\x80\x02cos\nsystem\nq\x00.").unwrap_err();
        assert!(e.contains("GLOBAL 'os.system' is not allowed"), "{e}");
        let e = run(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(e.contains("GLOBAL 'builtins.eval' is not allowed"), "{e}");
        let e = run(b"\x80\x02ctorch._utils\n_rebuild_tensor\n.").unwrap_err();
        assert!(e.contains("'torch._utils._rebuild_tensor'"), "{e}");
    }

    #[test]
    fn refuses_code_paths_and_malformed_streams() {
        for (bytes, want) in [
            (&b"\x80\x02)\x81."[..], "NEWOBJ"),
            (b"(i__main__\nX\n.", "INST"),
            (b"\x80\x02K\x01K\x02.", "2 objects"),
            (b"\x80\x02a", "pops an empty stack"),
            (b"\x80\x02(a", "pops past a MARK"),
            (b"\x80\x02t", "no MARK"),
            (
                b"\x80\x02X\xff\xff\xff\x7f",
                "declares 2147483647 bytes but only 0 remain",
            ),
            (b"\x80\x02h\x05.", "memo 5 was never stored"),
            (b"\x80\x02K\x01", "before STOP"),
            (
                b"\x80\x02\x8a\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
                "LONG1 of 10 bytes",
            ),
            (b"\x80\x02}K\x01s.", "reads an empty stack"),
            (b"\x80\x02]K\x01K\x02s.", "SETITEM on a list"),
            (b"\x80\x02K\x01K\x02R.", "REDUCE calls a int"),
        ] {
            let e = run(bytes).unwrap_err();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn nesting_and_copying_are_bounded() {
        // 100 nested one-tuples.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100));
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(e.contains("nest deeper than 64"), "{e}");
        // A 1000-element list in the memo, fetched and appended to again and
        // again: each append copies it, and the copying is bounded.
        let mut p = b"\x80\x02](".to_vec();
        p.extend(std::iter::repeat_n(*b"K\x01", 1000).flatten());
        p.extend_from_slice(b"eq\x00");
        p.extend(std::iter::repeat_n(*b"h\x00K\x01a", 2000).flatten());
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(e.contains("too complex for a state dict"), "{e}");
    }

    #[test]
    fn reads_small_values_like_python() {
        // pickle.dumps({'a': (1, -2, 3.5, True, None), 'b': [300, 70000]}, 2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00\x88Ntq\x02X\x01\x00\x00\x00bq\x03]q\x04(M,\x01Jp\x11\x01\x00eu.";
        let V::Dict(d) = run(p).unwrap() else {
            panic!("not a dict")
        };
        assert_eq!(d.items.len(), 2);
        let V::Tuple(t) = &d.items[0].1 else { panic!() };
        assert!(
            matches!(t.items[..], [V::Int(1), V::Int(-2), V::Float(f), V::Bool(true), V::None] if f == 3.5)
        );
        let V::List(l) = &d.items[1].1 else { panic!() };
        assert!(matches!(l.items[..], [V::Int(300), V::Int(70000)]));
        // LONG1, two's complement: pickle.dumps(2**40 | -2**40 | -2**63, 2).
        for (p, want) in [
            (
                &b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01."[..],
                1i64 << 40,
            ),
            (b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.", -(1i64 << 40)),
            (
                b"\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.",
                i64::MIN,
            ),
        ] {
            assert!(matches!(run(p).unwrap(), V::Int(v) if v == want), "{p:?}");
        }
    }
}
