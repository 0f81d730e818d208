//! `splicevi check-fixture`: run conformance cases (../shared/fixtures format) through the CPU model in
//! f32 and compare every expected tensor with the original's numbers (fixtures/README.md protocol and
//! tolerances).

use crate::data::Csr;
use crate::model::params::tensor_to_f64;
use crate::model::{Batch, Dims, Mat, ModelConfig, Noise, ParamKind, SpliceVae, SplBatch, StepOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CheckFixtureArgs {
    /// Case directories (each with config.json, inputs/params/expected .safetensors).
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
    /// Print every tensor, not only failures and a summary per case.
    #[arg(long)]
    pub verbose: bool,
}

pub const TOL_FORWARD: f64 = 1e-5;
pub const TOL_GRAD: f64 = 1e-4;
pub const TOL_ZERO_GRAD_ABS: f64 = 1e-4;

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    pub name: String,
    pub err: f64,
    pub tol: f64,
    /// "rel" or "abs"
    pub metric: &'static str,
    pub pass: bool,
    pub note: String,
}

#[derive(Clone, Debug, Default)]
pub struct CaseReport {
    pub case: String,
    pub checks: Vec<TensorCheck>,
    /// Why the case was not run (on a device whose step lacks one of its options).
    pub skipped: Option<String>,
    /// Expected tensors left out (the device step does not produce them: forward intermediates).
    pub not_compared: usize,
}

impl CaseReport {
    pub fn failures(&self) -> Vec<&TensorCheck> {
        self.checks.iter().filter(|c| !c.pass).collect()
    }
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

type Tensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

fn read_tensors(path: &Path) -> Result<Tensors> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e:?}", path.display()))?;
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let v = tensor_to_f64(&t).with_context(|| format!("{}: tensor {name}", path.display()))?;
        out.insert(name, (t.shape().to_vec(), v));
    }
    Ok(out)
}

fn get<'a>(t: &'a Tensors, name: &str, file: &str) -> Result<&'a (Vec<usize>, Vec<f64>)> {
    t.get(name).ok_or_else(|| anyhow::anyhow!("{file}: tensor `{name}` is missing"))
}

/// Model options and dims from a case's `module_args` (the original's constructor arguments).
pub fn config_from_module_args(cfg_json: &serde_json::Value) -> Result<(ModelConfig, Dims)> {
    let ma = cfg_json.get("module_args").and_then(|v| v.as_object()).context("config.json: no `module_args` object")?;
    let num = |k: &str| -> Result<usize> {
        ma.get(k).and_then(|v| v.as_u64()).map(|v| v as usize).with_context(|| format!("config.json: module_args.{k}"))
    };
    let dims_j = cfg_json.get("dims").context("config.json: no `dims`")?;
    let dims = Dims {
        n_genes: num("n_input_genes")?,
        n_junctions: num("n_input_junctions")?,
        n_atse: dims_j.get("A").and_then(|v| v.as_u64()).context("config.json: dims.A")? as usize,
        n_batch: num("n_batch")?,
        n_labels: num("n_labels")?,
        n_obs: num("n_obs")?,
        n_cats_per_cov: ma
            .get("n_cats_per_cov")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
            .unwrap_or_default(),
        n_cont: num("n_continuous_cov")?,
    };
    let mut opts = ma.clone();
    for k in ["n_input_genes", "n_input_junctions", "n_batch", "n_obs", "n_labels", "n_cats_per_cov", "n_continuous_cov"] {
        opts.remove(k);
    }
    let cfg: ModelConfig = serde_json::from_value(serde_json::Value::Object(opts))
        .context("config.json: module_args has an option this engine does not know")?;
    Ok((cfg, dims))
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

fn abs_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// Run one case and compare everything.
/// A case on the CPU model.
pub fn check_case(dir: &Path) -> Result<CaseReport> {
    check_case_on(dir, None)
}

/// A case on the CPU model, or with `dev` through the CUDA step (`cuda::step::DeviceModel`): its loss
/// terms, z and every gradient against the expected tensors (the forward intermediates it does not
/// return are counted in `not_compared`); a case with options the step lacks is `skipped`.
pub fn check_case_on(dir: &Path, dev: Option<&crate::cuda::CudaDevice>) -> Result<CaseReport> {
    check_case_with(dir, dev, crate::cuda::gemm::GemmPrecision::F32)
}

/// Tolerance (relative) through the CUDA step with `--precision bf16` of every loss term and of the
/// whole gradient taken as one vector: bf16 keeps 8 significant bits (about 4e-3 per rounded operand).
/// The fixtures' f32 tolerances apply in f32, where every tensor is checked to them.
pub const TOL_BF16: f64 = 3e-2;
/// bf16: the tolerance of each gradient tensor on its own. A gradient summed over cells with
/// cancellation magnifies the rounding: library-encoder's splicing encoder layers differ by 0.2–0.37 in
/// bf16 (1.4e-6 in f32) while its whole gradient differs by 1.2e-2. This bound catches a missing,
/// zeroed or mis-scaled tensor; the f32 check is the one that pins every tensor.
pub const TOL_BF16_TENSOR: f64 = 0.5;

/// [`check_case_on`] with the device step's GEMM operands in `precision` (bf16: [`TOL_BF16`] for the
/// loss terms and the whole gradient, [`TOL_BF16_TENSOR`] for each gradient tensor).
pub fn check_case_with(dir: &Path, dev: Option<&crate::cuda::CudaDevice>, precision: crate::cuda::gemm::GemmPrecision) -> Result<CaseReport> {
    let bf16 = dev.is_some() && precision == crate::cuda::gemm::GemmPrecision::Bf16;
    let cfg_path = dir.join("config.json");
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    let (cfg, dims) = config_from_module_args(&cfg_json)?;
    let inputs = read_tensors(&dir.join("inputs.safetensors"))?;
    let expected = read_tensors(&dir.join("expected.safetensors"))?;
    let inf = "inputs.safetensors";

    let junc2atse: Vec<u32> = get(&inputs, "junc2atse", inf)?.1.iter().map(|&v| v as u32).collect();
    let model = SpliceVae::new(cfg.clone(), dims.clone(), junc2atse)?;
    let mut report = CaseReport { case: dir.display().to_string(), ..Default::default() };
    if let Some(d) = dev {
        report.case = format!("{} on {}{}", dir.display(), d.info().name, if bf16 { " in bf16" } else { "" });
        if let Some(why) = crate::cuda::step::unsupported(&cfg, &dims) {
            report.skipped = Some(why);
            return Ok(report);
        }
    }

    // Parameter table vs. the original's state_dict.
    {
        let want = cfg_json.get("parameters").and_then(|v| v.as_array()).context("config.json: no `parameters`")?;
        let ours = &model.layout.entries;
        let mut note = String::new();
        if want.len() != ours.len() {
            note = format!("{} entries, the original has {}", ours.len(), want.len());
        }
        for (i, (w, o)) in want.iter().zip(ours).enumerate() {
            let wname = w.get("name").and_then(|v| v.as_str()).unwrap_or("");
            let wshape: Vec<usize> = w
                .get("shape")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
                .unwrap_or_default();
            let wkind = w.get("kind").and_then(|v| v.as_str()).unwrap_or("");
            let wdtype = w.get("dtype").and_then(|v| v.as_str()).unwrap_or("");
            let odtype = if o.kind == ParamKind::Counter { "int64" } else { "float32" };
            if wname != o.name || wshape != o.shape || wkind != o.kind.torch_kind() || wdtype != odtype {
                note = format!(
                    "entry {i}: ours `{}` {:?} {} {odtype}, original `{wname}` {wshape:?} {wkind} {wdtype}",
                    o.name,
                    o.shape,
                    o.kind.torch_kind()
                );
                break;
            }
        }
        report.checks.push(TensorCheck {
            name: "parameters (names, shapes, order, kinds)".into(),
            err: if note.is_empty() { 0.0 } else { 1.0 },
            tol: 0.0,
            metric: "exact",
            pass: note.is_empty(),
            note,
        });
    }

    let mut params = model.init_params::<f32>(0);
    let extra = params.load_safetensors(&dir.join("params.safetensors"))?;
    if !extra.is_empty() {
        bail!("{}: params.safetensors has tensors the model does not: {extra:?}", dir.display());
    }

    let batch = batch_from_inputs(&inputs, &dims)?;
    let b = batch.n_cells();
    let bn_mode = cfg_json.get("bn_mode").and_then(|v| v.as_str()).unwrap_or("running_stats");
    let training = match bn_mode {
        "batch_stats" => true,
        "running_stats" => false,
        other => bail!("config.json: unknown bn_mode `{other}`"),
    };
    let f = |k: &str, d: f64| cfg_json.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let noise = Noise::Given {
        eps_expr: get(&expected, "noise.eps_expr", "expected")?.1.clone(),
        eps_spl: get(&expected, "noise.eps_spl", "expected")?.1.clone(),
        eps_joint: get(&expected, "noise.eps_joint", "expected")?.1.clone(),
    };
    let opts = StepOptions {
        kl_weight: f("kl_weight", 1.0),
        cross_gate: f("cross_gate", 1.0),
        training,
        use_z_mean: cfg_json.get("use_z_mean").and_then(|v| v.as_bool()).unwrap_or(true),
        routing: None,
        seed: 0,
        noise,
    };
    let fwd = model.forward(&params, &batch, &opts)?;
    let grads = model.backward(&params, &batch, &fwd, None)?;
    let out = &fwd.out;
    let mut after = params.clone();
    model.apply_buffer_updates(&mut after, &out.buffer_updates);
    let dense = model.decode_dense(&params, &out.inference.qz_m, &batch, &out.inference.library, opts.cross_gate)?;

    // Our values for every expected name.
    let mut ours: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let m64 = |m: &Mat<f32>| m.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let v64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let i = &out.inference;
    ours.insert("inference.qzm_expr".into(), m64(&i.qzm_expr));
    ours.insert("inference.qzv_expr".into(), m64(&i.qzv_expr));
    ours.insert("inference.qzm_spl".into(), m64(&i.qzm_spl));
    ours.insert("inference.qzv_spl".into(), m64(&i.qzv_spl));
    ours.insert("inference.qz_m".into(), m64(&i.qz_m));
    ours.insert("inference.qz_v".into(), m64(&i.qz_v));
    ours.insert("inference.z".into(), m64(&i.z));
    ours.insert("inference.z_expr".into(), m64(&i.z_expr));
    ours.insert("inference.z_spl".into(), m64(&i.z_spl));
    ours.insert("inference.libsize_expr".into(), v64(&i.library));
    {
        // x = [expression | psi] as the original's inference returns it
        let (g, j) = (dims.n_genes, dims.n_junctions);
        let mut x = vec![0f64; b * (g + j)];
        for c in 0..b {
            let (idx, val) = batch.expr.row(c);
            for (&k, &v) in idx.iter().zip(val) {
                x[c * (g + j) + k as usize] = v as f64;
            }
            for e in batch.spl.cell_range(c) {
                x[c * (g + j) + g + batch.spl.junction[e] as usize] = batch.spl.psi[e] as f64;
            }
        }
        ours.insert("inference.x".into(), x);
    }
    ours.insert("generative.p".into(), m64(&dense.p));
    ours.insert("generative.phi".into(), v64(&model.concentration(&params)));
    ours.insert("generative.px_scale".into(), m64(&out.px_scale));
    ours.insert("generative.px_rate".into(), m64(&out.px_rate));
    ours.insert("generative.px_dropout".into(), m64(&out.px_dropout));
    ours.insert("generative.px_r".into(), m64(&out.theta));
    ours.insert("loss.loss".into(), vec![out.loss as f64]);
    ours.insert("loss.reconstruction_loss_expression".into(), v64(&out.rl_expr));
    ours.insert("loss.reconstruction_loss_splicing".into(), v64(&out.rl_spl));
    ours.insert("loss.kl_divergence_z".into(), v64(&out.kl));
    ours.insert("loss.kl_divergence_paired".into(), vec![out.penalty as f64]);
    ours.insert("loss.concentration_prior".into(), vec![out.concentration_prior as f64]);
    ours.insert("loss.reconstruction_loss_sum".into(), vec![out.reconstruction_loss_sum()]);
    ours.insert("loss.kl_local_sum".into(), vec![out.kl_local_sum()]);
    ours.insert("mask.expression".into(), i.mask_expr.iter().map(|&m| m as u8 as f64).collect());
    // p of the observed entries must agree with the dense decode (sparse training path = dense path)
    {
        let mut pe_dense = Vec::with_capacity(out.p_entries.len());
        for c in 0..b {
            for e in batch.spl.cell_range(c) {
                pe_dense.push(dense.p.at(c, batch.spl.junction[e] as usize) as f64);
            }
        }
        let err = rel_err(&v64(&out.p_entries), &pe_dense);
        report.checks.push(TensorCheck {
            name: "(sparse p of observed entries = dense p)".into(),
            err,
            tol: TOL_FORWARD,
            metric: "rel",
            pass: err <= TOL_FORWARD,
            note: String::new(),
        });
    }
    if expected.contains_key("analysis.psi_dm_posterior_mean") {
        ours.insert("analysis.psi_dm_posterior_mean".into(), m64(&model.dm_posterior_mean(&params, &dense.p, &batch.spl)));
    }
    for e in model.layout.entries.iter() {
        match e.kind {
            ParamKind::Param => {
                ours.insert(format!("grad.{}", e.name), v64(grads.get(model.layout.find(&e.name).unwrap()).unwrap()));
            }
            ParamKind::Frozen => {
                ours.insert(format!("grad.{}", e.name), vec![0.0; e.len]);
            }
            _ => {}
        }
        let key = format!("state_after.{}", e.name);
        if expected.contains_key(&key) {
            ours.insert(key, v64(after.get(model.layout.find(&e.name).unwrap())));
        }
    }

    if let Some(d) = dev {
        // The device's values replace the CPU's; what it does not produce is left out (counted).
        let mut dm = crate::cuda::step::DeviceModel::new(d, &model, &params)?;
        dm.precision = precision;
        // The analyses' dense decode on the device from the same posterior means (before the step, whose
        // BatchNorm update would change the running statistics it decodes with).
        let dec = dm.decode_dense(&out.inference.qz_m.data, &batch, opts.cross_gate, true, true)?;
        let o = dm.forward_backward(&batch, &opts, &mut |_| Ok(None), true)?;
        let g = dm.download_grads()?;
        let mut dv: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let rec: f64 = o.rl_expr.iter().zip(&o.rl_spl).map(|(&a, &b)| a as f64 + b as f64).sum();
        let kls: f64 = o.kl.iter().map(|&v| v as f64).sum::<f64>() + o.kl.len() as f64 * o.penalty;
        dv.insert("loss.loss".into(), vec![o.loss]);
        dv.insert("loss.reconstruction_loss_expression".into(), v64(&o.rl_expr));
        dv.insert("loss.reconstruction_loss_splicing".into(), v64(&o.rl_spl));
        dv.insert("loss.kl_divergence_z".into(), v64(&o.kl));
        dv.insert("loss.kl_divergence_paired".into(), vec![o.penalty]);
        dv.insert("loss.concentration_prior".into(), vec![o.concentration_prior]);
        dv.insert("loss.reconstruction_loss_sum".into(), vec![rec]);
        dv.insert("loss.kl_local_sum".into(), vec![kls]);
        dv.insert("inference.z".into(), v64(&o.z));
        dv.insert("generative.p".into(), v64(dec.p.as_deref().unwrap_or_default()));
        // (The expected px_scale is the forward's: the eval-mode decode's only without batch statistics.)
        if !opts.training {
            dv.insert("generative.px_scale".into(), v64(dec.px_scale.as_deref().unwrap_or_default()));
        }
        // BatchNorm's running statistics after the step (training mode), from the device parameters.
        let after_dev = dm.download_params()?;
        for (k, v) in &ours {
            if let Some(name) = k.strip_prefix("grad.") {
                let idx = model.layout.find(name).unwrap();
                dv.insert(k.clone(), g.get(idx).map(v64).unwrap_or_else(|| vec![0.0; v.len()]));
            } else if let Some(name) = k.strip_prefix("state_after.") {
                dv.insert(k.clone(), v64(after_dev.get(model.layout.find(name).unwrap())));
            }
        }
        report.checks.clear();
        report.not_compared = expected.keys().filter(|k| !k.starts_with("noise.") && !dv.contains_key(*k)).count();
        ours = dv;
    }
    let math_zero: Vec<String> = cfg_json
        .get("grads_mathematically_zero")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    // bf16: (Σ (ours − expected)², Σ expected²) over every gradient compared in relative terms.
    let mut bf16_grad = (0f64, 0f64);
    for name in names {
        if name.starts_with("noise.") {
            continue; // inputs of the check, not outputs
        }
        if dev.is_some() && !ours.contains_key(name.as_str()) {
            continue; // counted in not_compared
        }
        let (shape, want) = &expected[name];
        let Some(got) = ours.get(name.as_str()) else {
            report.checks.push(TensorCheck {
                name: name.clone(),
                err: f64::INFINITY,
                tol: 0.0,
                metric: "rel",
                pass: false,
                note: "not produced by this engine".into(),
            });
            continue;
        };
        if got.len() != want.len() {
            report.checks.push(TensorCheck {
                name: name.clone(),
                err: f64::INFINITY,
                tol: 0.0,
                metric: "rel",
                pass: false,
                note: format!("{} values, expected {} (shape {shape:?})", got.len(), want.len()),
            });
            continue;
        }
        let mut note = String::new();
        let (err, tol, metric): (f64, f64, &'static str) = if let Some(pn) = name.strip_prefix("grad.") {
            if math_zero.iter().any(|m| m == pn) {
                let nrm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                note = format!("‖ours‖ {:.2e}, ‖expected‖ {:.2e}", nrm(got), nrm(want));
                (abs_err(got, want), TOL_ZERO_GRAD_ABS, "abs")
            } else {
                (rel_err(got, want), TOL_GRAD, "rel")
            }
        } else {
            (rel_err(got, want), TOL_FORWARD, "rel")
        };
        let tol = match (bf16, metric, name.starts_with("grad.")) {
            (false, ..) => tol,
            (true, "rel", true) => {
                // Accumulated into the whole gradient's check below.
                for (a, b) in got.iter().zip(want) {
                    bf16_grad.0 += (a - b) * (a - b);
                    bf16_grad.1 += b * b;
                }
                TOL_BF16_TENSOR
            }
            _ => TOL_BF16.max(tol),
        };
        report.checks.push(TensorCheck {
            name: name.clone(),
            err,
            tol,
            metric,
            pass: err <= tol,
            note,
        });
    }
    if bf16 {
        let err = bf16_grad.0.sqrt() / bf16_grad.1.sqrt().max(1e-12);
        report.checks.push(TensorCheck {
            name: "grad (every parameter, one vector)".into(),
            err,
            tol: TOL_BF16,
            metric: "rel",
            pass: err <= TOL_BF16,
            note: "bf16: the whole gradient within TOL_BF16; each tensor within TOL_BF16_TENSOR".into(),
        });
    }
    Ok(report)
}

/// The fixtures' dense inputs as a model minibatch (observed splicing entries = psi_mask == 1).
pub fn batch_from_inputs(t: &Tensors, dims: &Dims) -> Result<Batch> {
    let f = "inputs.safetensors";
    let (xs, x) = get(t, "x", f)?;
    let b = xs[0];
    let (g, j) = (dims.n_genes, dims.n_junctions);
    if xs != &vec![b, g] {
        bail!("{f}: x has shape {xs:?}, expected [{b}, {g}]");
    }
    let mut expr = Csr { n_rows: b, n_cols: g, indptr: vec![0], ..Default::default() };
    for c in 0..b {
        for k in 0..g {
            let v = x[c * g + k];
            if v != 0.0 {
                expr.indices.push(k as u32);
                expr.values.push(v as f32);
            }
        }
        expr.indptr.push(expr.indices.len());
    }
    let psi = &get(t, "junc_ratio", f)?.1;
    let kk = &get(t, "junc_counts", f)?.1;
    let nn = &get(t, "atse_counts", f)?.1;
    let mask = &get(t, "psi_mask", f)?.1;
    let mut spl = SplBatch { n_junctions: j, indptr: vec![0], ..Default::default() };
    for c in 0..b {
        for jj in 0..j {
            let q = c * j + jj;
            if mask[q] != 0.0 {
                spl.junction.push(jj as u32);
                spl.k.push(kk[q] as f32);
                spl.n.push(nn[q] as f32);
                spl.psi.push(psi[q] as f32);
            }
        }
        spl.indptr.push(spl.junction.len());
    }
    let ints = |name: &str| -> Result<Vec<u32>> { Ok(get(t, name, f)?.1.iter().map(|&v| v as u32).collect()) };
    let cats = match t.get("cat_covs") {
        Some((shape, v)) => {
            let k = shape[1];
            (0..k).map(|col| (0..b).map(|r| v[r * k + col] as u32).collect()).collect()
        }
        None => Vec::new(),
    };
    let (cont, n_cont) = match t.get("cont_covs") {
        Some((shape, v)) => (v.iter().map(|&x| x as f32).collect(), shape[1]),
        None => (Vec::new(), 0),
    };
    Ok(Batch {
        expr,
        library: get(t, "size_factor", f)?.1.iter().map(|&v| v as f32).collect(),
        batch: ints("batch_index")?,
        labels: ints("labels")?,
        cats,
        cont,
        n_cont,
        cell_idx: Some(ints("cell_idx")?),
        spl,
    })
}

pub fn print_report(r: &CaseReport, verbose: bool) {
    if let Some(why) = &r.skipped {
        println!("== {} : SKIPPED: {why}", r.case);
        return;
    }
    let n_fail = r.failures().len();
    let left = if r.not_compared > 0 { format!(" ({} forward intermediates not produced by the device step)", r.not_compared) } else { String::new() };
    println!("== {} : {} checks, {} failed{left}", r.case, r.checks.len(), n_fail);
    for c in &r.checks {
        if verbose || !c.pass {
            println!(
                "{}  {:<70} {} err {:.3e} (tol {:.0e}){}",
                if c.pass { "PASS" } else { "FAIL" },
                c.name,
                c.metric,
                c.err,
                c.tol,
                if c.note.is_empty() { String::new() } else { format!("  [{}]", c.note) }
            );
        }
    }
}

pub fn run(args: CheckFixtureArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    let dev = match device {
        crate::device::Device::Cuda(info) => Some(crate::cuda::CudaDevice::open(info.ordinal)?),
        crate::device::Device::Cpu => None,
    };
    let (mut failed, mut skipped) = (Vec::new(), 0);
    // A glob over the fixtures folder (`fixtures/*`) also names its README: files are passed over.
    let cases: Vec<&std::path::PathBuf> = args.cases.iter().filter(|p| !p.is_file()).collect();
    for f in args.cases.iter().filter(|p| p.is_file()) {
        eprintln!("passing over {}: a file, not a case directory", f.display());
    }
    anyhow::ensure!(!cases.is_empty(), "no case directory among the {} path(s) given", args.cases.len());
    for dir in cases.iter().copied() {
        let r = check_case_with(dir, dev.as_ref(), precision).with_context(|| format!("case {}", dir.display()))?;
        print_report(&r, args.verbose);
        if r.skipped.is_some() {
            skipped += 1;
        } else if !r.passed() {
            failed.push(dir.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!("{} case(s) failed: {}", failed.len(), failed.join(", "));
    }
    if skipped > 0 {
        println!("{} case(s) passed, {skipped} skipped (options the device step lacks)", cases.len() - skipped);
    } else {
        println!("all {} case(s) passed", cases.len());
    }
    Ok(())
}
