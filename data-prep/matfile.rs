//! A minimal reader for MATLAB v5 MAT-files, enough for the ILSVRC2012 devkit's `meta.mat`:
//! a struct array `synsets` with a numeric `ILSVRC2012_ID` and a char `WNID` per element.
//! Handles compressed (miCOMPRESSED) and plain elements, and numeric data stored in any
//! integer or float type (MATLAB stores doubles in the smallest type that holds them).

use std::io::Read;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;

/// A parsed array: what `meta.mat` needs.
#[derive(Debug, Clone)]
pub enum Value {
    Numeric(Vec<f64>),
    Char(String),
    Struct { fields: Vec<String>, elements: Vec<Vec<Value>> },
    Other,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.data.get(self.pos..self.pos + 4).ok_or("unexpected end of MAT data")?;
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One data element: (type, payload). Small elements pack type and size in one word.
    fn element(&mut self) -> Result<(u32, &'a [u8]), String> {
        let first = self.u32()?;
        if first >> 16 != 0 {
            let (ty, n) = (first & 0xFFFF, (first >> 16) as usize);
            let b = self.data.get(self.pos..self.pos + n).ok_or("truncated small element")?;
            self.pos += 4;
            return Ok((ty, b));
        }
        let n = self.u32()? as usize;
        let b = self.data.get(self.pos..self.pos + n).ok_or("truncated element")?;
        self.pos += if first == MI_COMPRESSED { n } else { n.div_ceil(8) * 8 };
        Ok((first, b))
    }

    fn done(&self) -> bool {
        self.pos + 8 > self.data.len()
    }
}

fn numbers(ty: u32, b: &[u8]) -> Vec<f64> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        };
    }
    match ty {
        MI_INT8 => b.iter().map(|&x| x as i8 as f64).collect(),
        MI_UINT8 => b.iter().map(|&x| x as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        _ => Vec::new(),
    }
}

fn matrix(payload: &[u8]) -> Result<Value, String> {
    if payload.is_empty() {
        return Ok(Value::Other);
    }
    let mut c = Cursor { data: payload, pos: 0 };
    let (_, flags) = c.element()?;
    let class = *flags.first().ok_or("empty array flags")?;
    let (_, dims) = c.element()?;
    let count: usize = numbers(MI_INT32, dims).iter().map(|&d| d as usize).product();
    let _name = c.element()?;
    match class {
        MX_STRUCT => {
            let (_, len) = c.element()?;
            let len = numbers(MI_INT32, len).first().copied().unwrap_or(32.0) as usize;
            let (_, names) = c.element()?;
            let fields: Vec<String> = names
                .chunks(len.max(1))
                .map(|n| String::from_utf8_lossy(n).trim_end_matches('\0').to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let mut elements = Vec::with_capacity(count);
            for _ in 0..count {
                let mut values = Vec::with_capacity(fields.len());
                for _ in &fields {
                    let (ty, p) = c.element()?;
                    values.push(if ty == MI_MATRIX { matrix(p)? } else { Value::Other });
                }
                elements.push(values);
            }
            Ok(Value::Struct { fields, elements })
        }
        MX_CHAR => {
            let (ty, b) = c.element()?;
            let s = match ty {
                MI_UTF8 | MI_UINT8 | MI_INT8 => String::from_utf8_lossy(b).into_owned(),
                _ => numbers(ty, b).iter().filter_map(|&u| char::from_u32(u as u32)).collect(),
            };
            Ok(Value::Char(s))
        }
        6..=15 => {
            let (ty, b) = c.element()?;
            Ok(Value::Numeric(numbers(ty, b)))
        }
        _ => Ok(Value::Other),
    }
}

/// Top-level variables of a MAT-file, by name.
pub fn read_variables(bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
    if bytes.len() < 128 || &bytes[126..128] != b"IM" {
        return Err("not a little-endian MATLAB v5 MAT-file".into());
    }
    let mut out = Vec::new();
    let mut c = Cursor { data: &bytes[128..], pos: 0 };
    while !c.done() {
        let (ty, payload) = c.element()?;
        let owned = if ty == MI_COMPRESSED {
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(payload)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("bad compressed element: {e}"))?;
            inflated
        } else {
            payload.to_vec()
        };
        let mut inner = Cursor { data: &owned, pos: 0 };
        let (t, p) = if ty == MI_COMPRESSED { inner.element()? } else { (ty, &owned[..]) };
        if t != MI_MATRIX {
            continue;
        }
        // The name is the third sub-element of a matrix.
        let mut m = Cursor { data: p, pos: 0 };
        let name = if p.is_empty() {
            String::new()
        } else {
            m.element()?;
            m.element()?;
            String::from_utf8_lossy(m.element()?.1).into_owned()
        };
        out.push((name, matrix(p)?));
    }
    Ok(out)
}

/// ILSVRC2012_ID -> WNID from the devkit's `meta.mat` (`synsets` struct array).
pub fn ilsvrc_id_to_wnid(bytes: &[u8]) -> Result<std::collections::HashMap<u32, String>, String> {
    let vars = read_variables(bytes)?;
    let (_, synsets) = vars.iter().find(|(n, _)| n == "synsets").ok_or("no variable `synsets`")?;
    let Value::Struct { fields, elements } = synsets else {
        return Err("`synsets` is not a struct array".into());
    };
    let id_f =
        fields.iter().position(|f| f == "ILSVRC2012_ID").ok_or("`synsets` has no ILSVRC2012_ID field")?;
    let wnid_f = fields.iter().position(|f| f == "WNID").ok_or("`synsets` has no WNID field")?;
    let mut map = std::collections::HashMap::new();
    for e in elements {
        if let (Value::Numeric(id), Value::Char(w)) = (&e[id_f], &e[wnid_f]) {
            if let Some(&id) = id.first() {
                map.insert(id as u32, w.trim().to_string());
            }
        }
    }
    Ok(map)
}
