using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using ScottPlot;

namespace EraserWorker.Evaluation;

/// <summary>
/// Writes an experiment's outputs: <c>results.json</c> (the rows, plus the settings, base model and per-adapter
/// preparation costs), <c>report.md</c> (mean ± sd over seeds, the targets checked) and two PNG plots.
/// </summary>
public static class ExperimentReport
{
    public const string ResultsFile = "results.json", ReportFile = "report.md", ForgetRetainPlot = "forget-vs-retain.png", TimePlot = "time-per-method.png";

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static void Write(ExperimentResults results, string directory)
    {
        Directory.CreateDirectory(directory);
        // results.json: the issue's row list at the top level's "rows", with everything needed to reproduce it.
        File.WriteAllText(Path.Combine(directory, ResultsFile), JsonSerializer.Serialize(results, Json));
        WriteReport(results, directory);
    }

    /// <summary>Reads a results.json written by <see cref="Write"/>.</summary>
    public static ExperimentResults Read(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<ExperimentResults>(File.ReadAllText(path), Json)
                ?? throw new InvalidDataException($"{path}: empty results.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not an experiment results.json ({e.Message}).", e);
        }
    }

    /// <summary>report.md and the plots from results (also for re-rendering an earlier run's results.json).</summary>
    public static void WriteReport(ExperimentResults results, string directory)
    {
        Directory.CreateDirectory(directory);
        PlotForgetRetain(results, Path.Combine(directory, ForgetRetainPlot));
        PlotTimes(results, Path.Combine(directory, TimePlot));
        File.WriteAllText(Path.Combine(directory, ReportFile), Markdown(results));
    }

    /// <summary>(task label, fraction) groups in run order.</summary>
    private static List<(string Task, double Fraction, List<ResultRow> Rows)> Groups(ExperimentResults r) =>
        r.Rows.GroupBy(x => (x.Task, Math.Round(x.Fraction, 4))).Select(g => (g.Key.Task, g.Key.Item2, g.ToList())).ToList();

    private static string Label(string task, double fraction) => task == "removal" ? $"removal {fraction:P0}" : $"{task} ({fraction:P0})";

    public static (double Mean, double Sd) Stats(IEnumerable<double> values)
    {
        var v = values.ToList();
        if (v.Count == 0)
            return (double.NaN, double.NaN);
        double mean = v.Average();
        double sd = v.Count > 1 ? Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Count - 1)) : 0;
        return (mean, sd);
    }

    private static string Pm(IEnumerable<double> values, string format)
    {
        var (m, s) = Stats(values);
        return $"{m.ToString(format, CultureInfo.InvariantCulture)} ± {s.ToString(format, CultureInfo.InvariantCulture)}";
    }

    /// <summary>Forget-set effect of a method relative to retraining's, per seed: (method − none) / (retrain − none).</summary>
    public static double EffectRatio(IReadOnlyList<ResultRow> rows, string method, int seed)
    {
        var none = rows.First(x => x.Seed == seed && x.Method == ExperimentRunner.None).ForgetLoss;
        var retrain = rows.First(x => x.Seed == seed && x.Method == ExperimentRunner.Retrain).ForgetLoss;
        var m = rows.First(x => x.Seed == seed && x.Method == method).ForgetLoss;
        return (m - none) / (retrain - none);
    }

    private static string Markdown(ExperimentResults r)
    {
        var s = r.Settings;
        var b = r.BaseModel;
        var md = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        md.AppendLine($"# Unlearning quality and speed against retraining ({s.Name} run)");
        md.AppendLine();
        md.AppendLine($"Command: `{r.Command}` — started {r.StartedAt:yyyy-MM-dd HH:mm} UTC, {r.TotalSeconds / 60:F1} min in total on {r.Machine}.");
        md.AppendLine();
        md.AppendLine("## Setting");
        md.AppendLine();
        md.AppendLine($"- **Base model**: a LLaMA-family model (RMSNorm, RoPE, grouped-query attention {s.Heads}/{s.KvHeads} heads, SwiGLU, tied embeddings; " +
            $"{s.Layers} layers, hidden {s.Hidden}, MLP {s.Intermediate}; {b.Parameters:N0} weights) pretrained here from random weights for " +
            $"{s.PretrainSteps} steps × {s.PretrainBatch} windows × {s.PretrainSequence} tokens in {b.Seconds:F0} s; held-out loss " +
            $"{b.InitialValidationLoss:F2} → {b.FinalValidationLoss:F2} nats/token.");
        md.AppendLine($"- **Corpus**: the licence texts of Debian's `base-files` package in `{b.CorpusDirectory}` ({b.CorpusCharacters:N0} characters, " +
            $"{b.CorpusFiles.Count} files, sha256 `{b.CorpusSha256[..16]}…`): real English prose that is on every Debian/Ubuntu machine and image " +
            "(base-files is Essential), so the run needs no download and is reproducible. Tokenizer: a byte-level BPE with " +
            $"{b.VocabSize} ids learned from the same text (`tokenizer.json`, read through Microsoft.ML.Tokenizers).");
        md.AppendLine($"- **Task**: {s.TrainSamples} facts `\"The secret of {{key}} is\" → \" {{word}} {{word}}.\"` with words from the corpus; every " +
            $"answer is per-sample (no other sample implies it), so a model retrained without a sample cannot know it. {s.TestSamples} held-out facts " +
            $"with unseen keys give the test loss. Planted defects: {s.NoisyPromptFraction:P0} of the prompts have a typo in the key, " +
            $"{s.CorruptedResponseFraction:P0} of the responses a wrong answer.");
        md.AppendLine($"- **Adapter**: LoRA r = {s.Rank}, α = {s.Alpha} on {string.Join(", ", s.TargetModules)} ({r.Adapters[0].Parameters:N0} parameters), " +
            $"AdamW lr {s.LearningRate.ToString(inv)} linear to 0, {s.Epochs} epochs, batch {s.BatchSize}, L2 {s.L2.ToString(inv)} (sum convention, also the cache's l2). " +
            "Retraining uses the same initialisation, seed and schedule on the edited data.");
        md.AppendLine($"- **Seeds**: {string.Join(", ", s.Seeds)} (each seed draws the facts, the defects, the removed samples, the adapter " +
            "initialisation and the shuffles). Every hyper-parameter was fixed before the evaluation seeds were run (tuning used seed 0 only).");
        md.AppendLine();
        md.AppendLine("**Methods.** `retrain`: the gold standard. `none`: the original adapter. `eraser-direct`: the engine on the cached " +
            "sampled-curvature rows (Gauss–Newton/Fisher, SPEC §1), direct solver — what the worker runs. `eraser-direct-ef`: the same on a " +
            "gradients-only cache (empirical Fisher, cᵢ = gᵢ). `eraser-exact-cg`: the exact Hessian of the " +
            $"edited objective by double backward through the model (LLMEraser's formulation), conjugate gradient to {s.ExactCgTolerance.ToString(inv)} " +
            $"relative residual or {s.ExactCgMaxIterations} iterations. `llmeraser`: the paper's solver (Adam on the same quadratic as `eraser-direct` " +
            "with the published x_lr = x_init = x_adjust = 1e-5, 1000 steps). `gradient-ascent` (removal only): " +
            $"{s.GradientAscentSteps} Adam steps up the forget set's loss at the fine-tuning learning rate.");
        md.AppendLine();
        md.AppendLine("**Metrics.** Losses are the mean response-token cross-entropy. *Forget set*: for removal the removed samples; for the " +
            "replacement tasks the edited samples in their corrected form (what the model should now answer). *Retain*: the training samples " +
            "the task does not touch. *Test*: held-out facts. *EM*: greedy exact match of the forget set's responses. *Effect ratio*: " +
            "(forget loss − none's) / (retrain's − none's), per seed; 1 means the method moved the forget set exactly as retraining did " +
            "(for the replacement tasks the forget loss falls, and the ratio compares the falls). " +
            "*Distance*: ‖ΔW − ΔW_retrain‖ / ‖ΔW₀ − ΔW_retrain‖ over the adapters' weight changes ΔW = scaling·B·A (LoRA's factors " +
            "themselves are not identifiable); 1 for `none`, 0 for `retrain`. *Seconds*: the update alone (retraining: its epochs; engine variants: the solve on " +
            "the warm cache, plus computing the corrected samples' rows for the replacement tasks). *Peak*: resident memory of the process during " +
            "the method (it includes the base model, the warm engine and the .NET runtime).");
        md.AppendLine();

        if (r.Calibration is { } cal)
        {
            md.AppendLine("## Damping, calibrated on a development seed");
            md.AppendLine();
            md.AppendLine($"Before any evaluation seed ran, seed {cal.Seed} (not an evaluation seed) ran each task kind once — removal of " +
                $"{s.CalibrationFraction:P0}, its own query modification and response correction — retrained, and tried each damping δ " +
                "(λ = l2 + δ) per engine variant; the run kept, per task kind and variant, the δ closest to retraining on both the forget-set " +
                $"effect and the retain loss (least |log effect ratio| + |log(retain loss / retraining's)|). {cal.Seconds:F0} s in all.");
            md.AppendLine();
            md.AppendLine("| task | samples | forget loss none → retrain | retrain's retain loss |");
            md.AppendLine("|---|---|---|---|");
            foreach (var t in cal.Tasks)
                md.AppendLine(inv, $"| {t.Task} | {t.Edited} | {t.NoneForgetLoss:F3} → {t.RetrainForgetLoss:F3} | {t.RetrainRetainLoss:F3} |");
            md.AppendLine();
            md.AppendLine("| task | variant | δ | effect ratio | retain loss | solve s | chosen |");
            md.AppendLine("|---|---|---|---|---|---|---|");
            foreach (var p in cal.Points)
                md.AppendLine(inv, $"| {p.Task} | {p.Method} | {p.Damping:G3} | {p.EffectRatio:F2} | {p.RetainLoss:F3} | {p.Seconds:F2} | {(cal.Chosen.GetValueOrDefault($"{p.Task}/{p.Method}", double.NaN) == p.Damping ? "✔" : "")} |");
            md.AppendLine();
        }

        md.AppendLine("## Adapter preparation (once per adapter, not per request)");
        md.AppendLine();
        md.AppendLine("| seed | training samples | LoRA parameters | fine-tuning s | final train loss | ‖∇L(θ₀)‖ | sampled-curvature cache s | cache MB | gradients-only cache s | engines load + warm s |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var a in r.Adapters)
            md.AppendLine(inv, $"| {a.Seed} | {a.TrainingSamples} | {a.Parameters:N0} | {a.TrainSeconds:F1} | {a.FinalTrainLoss:F4} | {a.FinalGradientNorm:G3} | {a.CacheBuildSeconds:F1} | {a.CacheBytes / 1e6:F1} | {a.GradientCacheBuildSeconds:F1} | {a.EngineLoadSeconds:F2} |");
        md.AppendLine();

        md.AppendLine("## Results (mean ± sd over seeds)");
        var checks = new List<TargetCheck>();
        foreach (var (task, fraction, rows) in Groups(r))
        {
            md.AppendLine();
            md.AppendLine($"### {Label(task, fraction)} — {rows[0].Edited} of {s.TrainSamples} samples");
            md.AppendLine();
            md.AppendLine("| method | forget loss | forget EM | effect ratio | retain loss | test loss | distance | seconds | speed-up vs retrain | peak MB |");
            md.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
            var retrainSeconds = Stats(rows.Where(x => x.Method == ExperimentRunner.Retrain).Select(x => x.Seconds)).Mean;
            foreach (var method in ExperimentRunner.Methods)
            {
                var m = rows.Where(x => x.Method == method).ToList();
                if (m.Count == 0)
                    continue;
                var seeds = m.Select(x => x.Seed).ToList();
                string effect = method == ExperimentRunner.None ? "0" : Pm(seeds.Select(sd => EffectRatio(rows, method, sd)), "F2");
                double seconds = Stats(m.Select(x => x.Seconds)).Mean;
                string speed = method is ExperimentRunner.None or ExperimentRunner.Retrain ? "—" : $"{retrainSeconds / seconds:F0}×";
                md.AppendLine(inv, $"| {method} | {Pm(m.Select(x => x.ForgetLoss), "F3")} | {Pm(m.Select(x => x.ForgetExactMatch), "F2")} | {effect} | " +
                    $"{Pm(m.Select(x => x.RetainLoss), "F3")} | {Pm(m.Select(x => x.TestLoss), "F3")} | {Pm(m.Select(x => x.DistanceToRetrain), "F2")} | " +
                    $"{(method == ExperimentRunner.None ? "—" : Pm(m.Select(x => x.Seconds), seconds < 1 ? "F3" : "F1"))} | {speed} | " +
                    $"{Stats(m.Select(x => x.PeakMemoryBytes / 1e6)).Mean:F0} |");
            }
            checks.AddRange(Targets(Label(task, fraction), rows));
        }
        md.AppendLine();
        md.AppendLine("## Targets");
        md.AppendLine();
        md.AppendLine("Targets of issue 5 for the best engine variant of each task: forget-set effect within 0.5–1.5× of retraining's, retain loss " +
            "within 10 % of retraining's, at least 20× faster than retraining (the cache build is per adapter, in the preparation table). Every " +
            "engine variant is listed; the best (bold) meets the most targets, ties going to the effect ratio closest to 1. *Retrain spread*: " +
            "the standard deviation of retraining's own forget-set effect over the seeds, relative to its mean.");
        md.AppendLine();
        md.AppendLine("| task | variant | effect ratio | retrain spread | retain loss vs retrain | speed-up | met |");
        md.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var group in checks.GroupBy(c => c.Task))
        {
            var best = group.OrderByDescending(c => c.Met).ThenBy(c => Math.Abs(c.EffectRatio - 1)).First();
            foreach (var c in group)
                md.AppendLine(TargetRow(c, ReferenceEquals(c, best)));
        }
        md.AppendLine();
        var bests = checks.GroupBy(c => c.Task).Select(g => g.OrderByDescending(c => c.Met).ThenBy(c => Math.Abs(c.EffectRatio - 1)).First()).ToList();
        int allMet = bests.Count(c => c.Met == 3);
        md.AppendLine($"**{allMet} of {bests.Count} tasks** have an engine variant meeting all three targets.");
        if (allMet < bests.Count)
        {
            md.AppendLine();
            md.AppendLine("Why targets are missed, from the measurements above:");
            md.AppendLine();
            double gradient = Stats(r.Adapters.Select(a => a.FinalGradientNorm)).Mean;
            if (bests.Any(c => !c.RetainMet))
                md.AppendLine("- *Retain loss.* The influence update is one Newton step from θ₀ on a model of the objective, and it is " +
                    "exact only when θ₀ minimises the objective and the loss is quadratic around it. Here θ₀ is not a minimiser (‖∇L(θ₀)‖ = " + gradient.ToString("G3", inv) + " " +
                    "after the fine-tuning schedule, mean over seeds), and per-sample memorised facts are the least quadratic case: the LoRA product " +
                    "B·A makes the loss bilinear in its factors, and the Gauss–Newton/Fisher curvature of the cached variants leaves out the " +
                    "residual term that is large while the fit is imperfect. A step large enough to forget as much as retraining does therefore " +
                    "also moves the retained facts. The calibration table shows the trade-off: more damping protects the retain loss and forgets less.");
            if (bests.Any(c => !c.SpeedMet))
                md.AppendLine("- *Speed.* The exact-Hessian variant needs a double-backward pass over the whole edited training set per conjugate-gradient " +
                    "iteration; at this scale twenty of them cost as much as a few fine-tuning epochs. The cached variants solve on the warm cache in " +
                    "milliseconds but pay with the approximate curvature.");
            if (bests.Any(c => !c.EffectMet))
                md.AppendLine("- *Effect.* With the damping fixed on the calibration seed, the size of the step varies from seed to seed and task to " +
                    "task; where the ratio leaves 0.5–1.5 the step over- or under-shoots retraining's change of the forget set.");
        }
        md.AppendLine();
        md.AppendLine("## Plots");
        md.AppendLine();
        md.AppendLine($"![forget vs retain loss]({ForgetRetainPlot})");
        md.AppendLine();
        md.AppendLine($"![seconds per method]({TimePlot})");
        md.AppendLine();
        md.AppendLine("Per-row notes (solver residuals, iterations) are in `results.json`.");
        return md.ToString();
    }

    /// <summary>Whether one engine variant meets the three targets on one task (means over seeds).</summary>
    public sealed record TargetCheck(string Task, string Method, double EffectRatio, double EffectSd, double RetrainSpread, double RetainRatio,
        double SpeedUp, bool EffectMet, bool RetainMet, bool SpeedMet)
    {
        public int Met => (EffectMet ? 1 : 0) + (RetainMet ? 1 : 0) + (SpeedMet ? 1 : 0);
    }

    public static List<TargetCheck> Targets(string label, List<ResultRow> rows)
    {
        var seeds = rows.Select(x => x.Seed).Distinct().ToList();
        var retrain = rows.Where(x => x.Method == ExperimentRunner.Retrain).ToList();
        var none = rows.Where(x => x.Method == ExperimentRunner.None).ToList();
        // Retraining's own seed spread of the effect, relative to its mean effect.
        var effects = seeds.Select(sd => retrain.First(x => x.Seed == sd).ForgetLoss - none.First(x => x.Seed == sd).ForgetLoss).ToList();
        var (effectMean, effectSd) = Stats(effects);
        double spread = effectSd / Math.Abs(effectMean);
        var checks = new List<TargetCheck>();
        foreach (var method in ExperimentRunner.EngineVariants.Where(m => rows.Any(x => x.Method == m)))
        {
            var (ratio, ratioSd) = Stats(seeds.Select(sd => EffectRatio(rows, method, sd)));
            double retainRatio = Stats(rows.Where(x => x.Method == method).Select(x => x.RetainLoss)).Mean / Stats(retrain.Select(x => x.RetainLoss)).Mean;
            double speed = Stats(retrain.Select(x => x.Seconds)).Mean / Stats(rows.Where(x => x.Method == method).Select(x => x.Seconds)).Mean;
            checks.Add(new TargetCheck(label, method, ratio, ratioSd, spread, retainRatio, speed, ratio is >= 0.5 and <= 1.5,
                Math.Abs(retainRatio - 1) <= 0.10, speed >= 20));
        }
        return checks;
    }

    private static string TargetRow(TargetCheck c, bool best)
    {
        string Mark(bool ok) => ok ? "✔" : "✘";
        return string.Create(CultureInfo.InvariantCulture,
            $"| {c.Task} | {(best ? $"**{c.Method}**" : c.Method)} | {c.EffectRatio:F2} ± {c.EffectSd:F2} {Mark(c.EffectMet)} | ±{c.RetrainSpread:F2} | " +
            $"{c.RetainRatio:F3}× {Mark(c.RetainMet)} | {c.SpeedUp:F0}× {Mark(c.SpeedMet)} | {c.Met}/3 |");
    }

    private static void PlotForgetRetain(ExperimentResults r, string path)
    {
        var groups = Groups(r);
        var plot = new Multiplot();
        plot.AddPlots(groups.Count);
        var palette = new ScottPlot.Palettes.Category10();
        for (int g = 0; g < groups.Count; g++)
        {
            var (task, fraction, rows) = groups[g];
            var p = plot.GetPlot(g);
            // Gradient ascent diverges by an order of magnitude: keep the axes on the other methods and say so.
            var onScale = rows.Where(x => x.Method != ExperimentRunner.GradientAscent).ToList();
            double maxX = onScale.Max(x => x.RetainLoss), maxY = onScale.Max(x => x.ForgetLoss);
            double minX = onScale.Min(x => x.RetainLoss), minY = onScale.Min(x => x.ForgetLoss);
            bool offScale = rows.Any(x => x.Method == ExperimentRunner.GradientAscent && (x.RetainLoss > maxX * 1.5 || x.ForgetLoss > maxY * 1.5));
            p.Title(Label(task, fraction) + (offScale ? " (gradient ascent off-scale)" : ""), size: 12);
            p.XLabel("retain loss");
            p.YLabel("forget loss (edited samples)");
            for (int k = 0; k < ExperimentRunner.Methods.Length; k++)
            {
                var m = rows.Where(x => x.Method == ExperimentRunner.Methods[k]).ToList();
                if (m.Count == 0 || (offScale && ExperimentRunner.Methods[k] == ExperimentRunner.GradientAscent))
                    continue;
                var sc = p.Add.ScatterPoints(m.Select(x => x.RetainLoss).ToArray(), m.Select(x => x.ForgetLoss).ToArray(), palette.GetColor(k));
                sc.MarkerSize = 7;
                sc.LegendText = g == 0 ? ExperimentRunner.Methods[k] : "";
            }
            double padX = Math.Max(0.05, 0.08 * (maxX - minX)), padY = Math.Max(0.05, 0.08 * (maxY - minY));
            p.Axes.SetLimits(minX - padX, maxX + padX, minY - padY, maxY + padY);
            if (g == 0)
                p.ShowLegend(Alignment.UpperLeft);
        }
        plot.Layout = new ScottPlot.MultiplotLayouts.Grid(2, (groups.Count + 1) / 2);
        plot.SavePng(path, 1500, 850);
    }

    private static void PlotTimes(ExperimentResults r, string path)
    {
        var plot = new Plot();
        var methods = ExperimentRunner.Methods.Where(m => m != ExperimentRunner.None).ToList();
        var palette = new ScottPlot.Palettes.Category10();
        var groups = Groups(r);
        var ticks = new List<Tick>();
        for (int g = 0; g < groups.Count; g++)
        {
            var (task, fraction, rows) = groups[g];
            for (int k = 0; k < methods.Count; k++)
            {
                var m = rows.Where(x => x.Method == methods[k]).ToList();
                if (m.Count == 0)
                    continue;
                double position = g * (methods.Count + 1) + k;
                plot.Add.Bar(new Bar
                {
                    Position = position,
                    Value = Math.Log10(Math.Max(1e-4, Stats(m.Select(x => x.Seconds)).Mean)),
                    ValueBase = -4,
                    FillColor = palette.GetColor(Array.IndexOf(ExperimentRunner.Methods, methods[k])),
                });
            }
            ticks.Add(new Tick(g * (methods.Count + 1) + (methods.Count - 1) / 2.0, Label(task, fraction)));
        }
        for (int k = 0; k < methods.Count; k++)
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = methods[k], FillColor = palette.GetColor(Array.IndexOf(ExperimentRunner.Methods, methods[k])) });
        plot.ShowLegend(Alignment.UpperRight);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            Enumerable.Range(-4, 8).Select(e => new Tick(e, e >= 0 ? $"{Math.Pow(10, e):G}" : $"1e{e}")).ToArray());
        plot.YLabel("seconds (log scale, mean over seeds)");
        plot.Title("Time per method");
        plot.Axes.SetLimitsY(-4, Math.Ceiling(r.Rows.Max(x => Math.Log10(Math.Max(1e-4, x.Seconds)))) + 0.5);
        plot.SavePng(path, 1500, 600);
    }
}
