//! Core data types shared by readers, the simulator, the model and the analyses.

/// Compressed sparse rows with `u32` column indices. `indptr.len() == n_rows + 1`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Csr<T> {
    pub n_rows: usize,
    pub n_cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<T>,
}

impl<T: Copy> Csr<T> {
    pub fn empty(n_rows: usize, n_cols: usize) -> Self {
        Csr { n_rows, n_cols, indptr: vec![0; n_rows + 1], indices: Vec::new(), values: Vec::new() }
    }
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    /// Column indices of row `r` (also for a pattern-only matrix whose values were dropped).
    pub fn cols(&self, r: usize) -> &[u32] {
        &self.indices[self.indptr[r]..self.indptr[r + 1]]
    }
    /// Column indices and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[T]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }
}

/// Splicing modality: the observed (cell, junction) entries, i.e. those whose ATSE has n > 0 in the
/// cell (psi_mask = 1), stored per cell in CSR order (junctions ascending within a cell).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Splicing {
    pub n_cells: usize,
    pub n_junctions: usize,
    /// `indptr[c]..indptr[c+1]` are cell c's observed entries.
    pub indptr: Vec<usize>,
    pub junction: Vec<u32>,
    /// Junction read count k (integer-valued). Zero when the input had PSI only.
    pub k: Vec<f32>,
    /// ATSE total n (same for every junction of the ATSE in the cell); > 0 for every stored entry.
    pub n: Vec<f32>,
    /// psi = k / n (or the file's `junc_ratio` when present and consistent).
    pub psi: Vec<f32>,
    /// False when only PSI and a mask were given (no counts): only the BCE splicing loss is possible.
    pub has_counts: bool,
    /// ATSE index of each junction = position of its event id in `atse_ids` (sorted unique ids, as the
    /// original's pandas categorical does).
    pub junc2atse: Vec<u32>,
    pub atse_ids: Vec<String>,
    pub junction_names: Vec<String>,
    /// `var/gene_name` of the splicing modality when present (else empty strings).
    pub gene_names: Vec<String>,
}

impl Splicing {
    pub fn n_atse(&self) -> usize {
        self.atse_ids.len()
    }
    pub fn nnz(&self) -> usize {
        self.junction.len()
    }
    pub fn cell_range(&self, c: usize) -> std::ops::Range<usize> {
        self.indptr[c]..self.indptr[c + 1]
    }
}

/// One obs column as read from the file.
#[derive(Clone, Debug, PartialEq)]
pub enum ObsColumn {
    /// Categorical: `codes[i]` indexes `categories`; -1 = missing.
    /// `int_categories`: the categories were integers of this stored type (held here as their exact
    /// decimal strings) and are written back as such; None for string categories. `store`: how the
    /// column was stored, so that the outputs write it back the same way.
    Categorical { codes: Vec<i32>, categories: Vec<String>, int_categories: Option<IntWidth>, store: CatStore },
    /// Floating-point numbers (NaN = missing), and the width they were stored with (written back so:
    /// a float32 column, as scanpy's QC metrics are, stays float32; its values are exact in f64).
    Numeric(Vec<f64>, FloatWidth),
    /// Integers, kept apart from floats so the outputs write them back as integers.
    Int(IntColumn),
    Text(Vec<String>),
    Bool(Vec<bool>),
}

/// The HDF5 float type a numeric column was stored with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FloatWidth {
    F32,
    #[default]
    F64,
}

/// How a categorical column was stored (the outputs write it back the same way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatStore {
    /// anndata's `categorical` (pandas `category`), unordered; also what splicevi makes of text.
    #[default]
    Unordered,
    /// `categorical` with `ordered` true (pandas `Categorical(..., ordered=True)`).
    Ordered,
    /// `nullable-boolean` (pandas `boolean`): categories `False`, `True`; a missing value is code -1.
    NullableBool,
}

/// The HDF5 integer type a column was stored with (it is written back with the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntWidth {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

/// An integer column: anndata's plain integer arrays and its nullable ones (pandas `Int64` and
/// friends, encoding `nullable-integer`).
#[derive(Clone, Debug, PartialEq)]
pub struct IntColumn {
    /// Every int64 and uint64 value fits an i128 (a uint64 above i64::MAX, e.g. a hashed id, too).
    pub values: Vec<i128>,
    pub width: IntWidth,
    /// A nullable array's mask: true where the value is missing (the value there means nothing).
    /// None for a plain array, which has no missing values.
    pub mask: Option<Vec<bool>>,
}

impl IntColumn {
    /// An int64 column without missing values.
    pub fn plain(values: Vec<i64>) -> Self {
        IntColumn { values: values.into_iter().map(i128::from).collect(), width: IntWidth::I64, mask: None }
    }
    pub fn is_missing(&self, i: usize) -> bool {
        self.mask.as_ref().is_some_and(|m| m[i])
    }
    /// The values, None where missing.
    pub fn iter(&self) -> impl Iterator<Item = Option<i128>> + '_ {
        self.values.iter().enumerate().map(|(i, &v)| (!self.is_missing(i)).then_some(v))
    }
    /// The values as f64, NaN where missing.
    pub fn to_f64(&self) -> Vec<f64> {
        self.iter().map(|v| v.map_or(f64::NAN, |v| v as f64)).collect()
    }
    /// Rows `rows`, in that order.
    pub fn take(&self, rows: &[usize]) -> Self {
        IntColumn {
            values: rows.iter().map(|&r| self.values[r]).collect(),
            width: self.width,
            mask: self.mask.as_ref().map(|m| rows.iter().map(|&r| m[r]).collect()),
        }
    }
}

impl ObsColumn {
    /// A float64 column.
    pub fn numeric(v: Vec<f64>) -> Self {
        ObsColumn::Numeric(v, FloatWidth::F64)
    }
    pub fn len(&self) -> usize {
        match self {
            ObsColumn::Categorical { codes, .. } => codes.len(),
            ObsColumn::Numeric(v, _) => v.len(),
            ObsColumn::Int(c) => c.values.len(),
            ObsColumn::Text(v) => v.len(),
            ObsColumn::Bool(v) => v.len(),
        }
    }
    /// A numeric column's values as f64 (NaN = missing); None for other columns.
    pub fn numbers(&self) -> Option<Vec<f64>> {
        match self {
            ObsColumn::Numeric(v, _) => Some(v.clone()),
            ObsColumn::Int(c) => Some(c.to_f64()),
            _ => None,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A numeric column's first finite value that is not an integer: such a column holds a measurement
    /// (a library size, a score), not groups of cells.
    pub fn first_non_integer(&self) -> Option<f64> {
        match self {
            ObsColumn::Numeric(v, _) => v.iter().copied().find(|x| x.is_finite() && x.fract() != 0.0),
            _ => None,
        }
    }
    /// The column as strings (categorical labels, numbers formatted, text as is, booleans as pandas
    /// prints them: `True`, `False`).
    pub fn as_strings(&self) -> Vec<String> {
        match self {
            ObsColumn::Categorical { codes, categories, .. } => codes
                .iter()
                .map(|&c| if c < 0 { String::from("nan") } else { categories[c as usize].clone() })
                .collect(),
            ObsColumn::Numeric(v, _) => v.iter().map(|x| format!("{x}")).collect(),
            ObsColumn::Int(c) => c.iter().map(|v| v.map_or_else(|| String::from("nan"), |v| v.to_string())).collect(),
            ObsColumn::Text(v) => v.clone(),
            ObsColumn::Bool(v) => v.iter().map(|&b| if b { "True" } else { "False" }.to_string()).collect(),
        }
    }
}

/// A categorical covariate resolved to codes 0..levels.len().
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Categorical {
    pub name: String,
    pub codes: Vec<u32>,
    pub levels: Vec<String>,
}

/// Covariates the model consumes, resolved from obs columns named by flags.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Covariates {
    /// Batch (one level named "0" when no batch key is given).
    pub batch: Categorical,
    /// Labels (one dummy level unless a labels key is given).
    pub labels: Categorical,
    pub categorical: Vec<Categorical>,
    /// Continuous covariates: names and a row-major cells × C matrix.
    pub continuous_names: Vec<String>,
    pub continuous: Vec<f32>,
}

/// A paired expression + splicing dataset (or splicing only, `expression == None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Where it came from (used in error messages and written into run directories).
    pub source: String,
    pub cell_names: Vec<String>,
    pub gene_names: Vec<String>,
    /// Expression input (cells × genes), CSR, integer-valued for count likelihoods.
    pub expression: Option<Csr<f32>>,
    /// Size factor s_i per cell (`obsm/X_library_size[:,0]`, or the expression row sums).
    pub library_size: Vec<f32>,
    pub splicing: Splicing,
    /// All obs columns of the (first) modality / MuData, in file order.
    pub obs: Vec<(String, ObsColumn)>,
    /// The obs tables columns named by flags are looked up in ([`Dataset::obs_column`]), in lookup
    /// order: the global obs, then each modality's (a dataset built in memory lists `obs` here too).
    pub obs_tables: Vec<ObsTable>,
    pub covariates: Covariates,
}

/// An obs table aligned to the dataset's cells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObsTable {
    /// Where it is in the file (messages).
    pub field: String,
    /// `None` for the MuData's global obs (or the only obs of an AnnData / directory).
    pub modality: Option<String>,
    pub columns: Vec<(String, ObsColumn)>,
    /// Columns present but not decodable, with the reason.
    pub unreadable: Vec<(String, String)>,
}

impl Dataset {
    pub fn n_cells(&self) -> usize {
        self.cell_names.len()
    }
    pub fn n_genes(&self) -> usize {
        self.gene_names.len()
    }
    pub fn n_junctions(&self) -> usize {
        self.splicing.n_junctions
    }
    /// The obs column `name` (named by `flag`) and its field, found as training finds its covariates
    /// ([`super::load::lookup_column`]): an error lists the columns present.
    pub fn obs_column(&self, name: &str, flag: &str) -> anyhow::Result<(String, &ObsColumn)> {
        super::load::lookup_column(&self.source, &self.obs_tables, name, flag)
    }
    /// An error naming the file when its splicing modality has PSI only (`junc_ratio` and `psi_mask`,
    /// no junction counts k or ATSE totals n): `what` (a likelihood, an option) reads k and n, which
    /// such data does not have (the loader's k = 0, n = 1 are placeholders); `instead` says what to do.
    pub fn require_splicing_counts(&self, what: &str, instead: &str) -> anyhow::Result<()> {
        if self.splicing.has_counts {
            return Ok(());
        }
        anyhow::bail!(
            "{}: has PSI only (junc_ratio and psi_mask, no junction counts k or ATSE totals n), but {what} reads the counts; {instead}",
            self.source
        )
    }
}
