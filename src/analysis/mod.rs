//! Downstream analyses (model.md §7–§8): decoding for analyses (`posterior`), imputed PSI and normalized
//! expression written block by block (`impute`), differential expression and splicing (`differential`,
//! `de`, `ds`), the masked-ATSE imputation evaluation with the MeanBayes baseline (`evaluate`,
//! `meanbayes`, `impute_metrics`), latent metrics (`latent_metrics`) and the cross-fold classification
//! of §8.2 (`crossfold`); the UMAP layout of the latent pictures (`umap`).

pub mod crossfold;
pub mod clustering;
pub mod de;
pub mod differential;
pub mod ds;
pub mod evaluate;
pub mod impute;
pub mod impute_metrics;
pub mod latent_metrics;
pub mod leiden;
pub mod meanbayes;
pub mod outlier;
pub mod posterior;
pub mod resample;
pub mod scorecard;
pub mod umap;
