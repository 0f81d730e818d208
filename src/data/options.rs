//! Where to find things in an input file: modality, layer and column names (model.md §1.3, §14.4).
//! Shared by every command that reads data.

use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataOptions {
    /// Name of the expression modality in a .h5mu.
    #[arg(long, default_value = "rna")]
    pub rna_modality: String,
    /// Name of the splicing modality in a .h5mu.
    #[arg(long, default_value = "splicing")]
    pub splicing_modality: String,
    /// Expression input layer of the rna modality (default: X). The original's scripts use `length_norm`.
    #[arg(long)]
    pub rna_layer: Option<String>,
    /// Junction read counts k (splicing layer).
    #[arg(long, default_value = "cell_by_junction_matrix")]
    pub junc_counts_layer: String,
    /// ATSE totals n repeated on each junction (splicing layer).
    #[arg(long, default_value = "cell_by_cluster_matrix")]
    pub atse_counts_layer: String,
    /// PSI layer; derived as k / n when absent from the file.
    #[arg(long, default_value = "junc_ratio")]
    pub junc_ratio_layer: String,
    /// Observation mask layer; derived as [n > 0] when absent from the file.
    #[arg(long, default_value = "psi_mask")]
    pub psi_mask_layer: String,
    /// ATSE id column of the splicing var table.
    #[arg(long, default_value = "event_id")]
    pub event_id_key: String,
    /// obsm key of the size factors (column 0 used): the MuData's obsm, else the rna modality's. Without
    /// `X_library_size` the expression row sums stand in; a key given here must exist.
    #[arg(long, default_value = "X_library_size")]
    pub size_factor_key: String,
    /// obs column holding the batch.
    #[arg(long)]
    pub batch_key: Option<String>,
    /// obs column holding labels (used by gene-label dispersion).
    #[arg(long)]
    pub labels_key: Option<String>,
    /// obs columns used as categorical covariates.
    #[arg(long = "categorical-covariate", value_delimiter = ',')]
    pub categorical_covariate_keys: Vec<String>,
    /// obs columns used as continuous covariates.
    #[arg(long = "continuous-covariate", value_delimiter = ',')]
    pub continuous_covariate_keys: Vec<String>,
    /// Require integer expression values, as the count likelihoods (ZINB, NB, Poisson) assume; the
    /// original's `length_norm` layer is floored to integers. false accepts other values (scvi-tools
    /// only warns on them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    #[serde(default = "yes")]
    pub require_integer_expression: bool,
    /// Require integer junction counts and ATSE totals (binomial, beta-binomial, Dirichlet-multinomial).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    #[serde(default = "yes")]
    pub require_integer_splicing: bool,
}

/// (serde default of the checks: run configs written before they were options had them on)
fn yes() -> bool {
    true
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            rna_modality: "rna".into(),
            splicing_modality: "splicing".into(),
            rna_layer: None,
            junc_counts_layer: "cell_by_junction_matrix".into(),
            atse_counts_layer: "cell_by_cluster_matrix".into(),
            junc_ratio_layer: "junc_ratio".into(),
            psi_mask_layer: "psi_mask".into(),
            event_id_key: "event_id".into(),
            size_factor_key: "X_library_size".into(),
            batch_key: None,
            labels_key: None,
            categorical_covariate_keys: Vec::new(),
            continuous_covariate_keys: Vec::new(),
            require_integer_expression: true,
            require_integer_splicing: true,
        }
    }
}
