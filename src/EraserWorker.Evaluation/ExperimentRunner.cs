using System.Diagnostics;
using System.Text.Json;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Models;

namespace EraserWorker.Evaluation;

/// <summary>One method on one task and seed: the row schema of <c>results.json</c>.</summary>
/// <param name="Fraction">Share of the training set the task edits.</param>
/// <param name="ForgetLoss">Mean loss on the edited samples — for removal the removed samples as trained; for the
/// replacement tasks their corrected form (what the unlearned model should now answer).</param>
/// <param name="ForgetExactMatch">Share of those samples whose response greedy decoding reproduces.</param>
/// <param name="DistanceToRetrain">‖ΔW − ΔW_retrain‖ / ‖ΔW₀ − ΔW_retrain‖ over the weight changes ΔW = scaling·B·A
/// (1 for <c>none</c>, 0 for <c>retrain</c>).</param>
/// <param name="Seconds">Wall time of the method's update (retraining: its training epochs; the engine variants: the
/// solve on the warm cache plus any replacement rows they compute; the cache build is reported per adapter).</param>
/// <param name="PeakMemoryBytes">Peak resident memory of the process while the method ran (includes the loaded base
/// model, the warm engine and the .NET runtime).</param>
public sealed record ResultRow(string Task, double Fraction, string Method, int Seed, double ForgetLoss, double RetainLoss, double TestLoss,
    double ForgetExactMatch, double Seconds, long PeakMemoryBytes, double RetainExactMatch, double DistanceToRetrain, int Edited,
    string? Note = null);

/// <summary>What preparing one seed's adapter cost (counted once per adapter, not per request).</summary>
/// <param name="CacheBuildSeconds">The sampled-curvature cache (gradients + curvature rows).</param>
/// <param name="GradientCacheBuildSeconds">The gradients-only cache of the empirical-Fisher variant.</param>
public sealed record AdapterPreparation(int Seed, int TrainingSamples, long Parameters, double TrainSeconds, double FinalTrainLoss,
    double FinalGradientNorm, double CacheBuildSeconds, long CacheBytes, double GradientCacheBuildSeconds, double EngineLoadSeconds);

public sealed record BaseModelSummary(long Parameters, int VocabSize, long CorpusCharacters, long TrainTokens, long ValidationTokens,
    double InitialValidationLoss, double FinalValidationLoss, double Seconds, string CorpusSha256, IReadOnlyList<string> CorpusFiles, string CorpusDirectory);

/// <summary>One damping value tried on the calibration seed.</summary>
public sealed record CalibrationPoint(string Task, string Method, double Damping, double ForgetLoss, double EffectRatio, double RetainLoss, double Seconds);

/// <summary>A task on the calibration seed: retraining's forget and retain losses there.</summary>
public sealed record CalibrationTask(string Task, int Edited, double NoneForgetLoss, double RetrainForgetLoss, double RetrainRetainLoss);

/// <summary>How the damping was chosen, on a development seed that is not an evaluation seed.</summary>
/// <param name="Chosen">δ per "task/variant".</param>
public sealed record DampingCalibration(int Seed, IReadOnlyList<CalibrationTask> Tasks, IReadOnlyList<CalibrationPoint> Points,
    IReadOnlyDictionary<string, double> Chosen, double Seconds);

public sealed record ExperimentResults(ExperimentSettings Settings, string Command, DateTimeOffset StartedAt, double TotalSeconds,
    BaseModelSummary BaseModel, DampingCalibration? Calibration, IReadOnlyList<AdapterPreparation> Adapters, IReadOnlyList<ResultRow> Rows, string Machine);

/// <summary>
/// Runs the experiments of issue 5 end to end: pretrains the base model on the corpus, and per seed fine-tunes the
/// original adapter on the memorisation task (with its planted defects), builds its gradient cache, then for every
/// task (removal of each fraction, query modification, response correction) runs every method and evaluates it.
/// </summary>
public sealed class ExperimentRunner(ExperimentSettings settings, string outputDirectory, IProgress<string>? log = null)
{
    public const string Retrain = "retrain", None = "none", EraserDirect = "eraser-direct", EraserDirectEf = "eraser-direct-ef",
        EraserExactCg = "eraser-exact-cg", LlmEraser = "llmeraser", GradientAscent = "gradient-ascent";

    public static readonly string[] Methods = [Retrain, None, EraserDirect, EraserDirectEf, EraserExactCg, LlmEraser, GradientAscent];

    /// <summary>The engine variants, whose damping is calibrated and which the targets are checked on.</summary>
    public static readonly string[] EngineVariants = [EraserDirect, EraserDirectEf, EraserExactCg];

    private readonly Stopwatch _clock = new();
    private ExperimentSettings _settings = settings;

    /// <param name="baseModel">A pretrained base-model folder to reuse (with tokenizer.json), or null to pretrain one.</param>
    public ExperimentResults Run(string command, string corpusDirectory = Corpus.DefaultDirectory, string? baseModel = null, CancellationToken cancellation = default)
    {
        var started = DateTimeOffset.UtcNow;
        _clock.Start();
        string work = Path.Combine(outputDirectory, "work");
        if (_settings.Seeds.Length == 0)
            throw new ArgumentException("No evaluation seeds.");
        if (_settings.CalibrationSeed is int reserved && _settings.Seeds.Contains(reserved))
            throw new ArgumentException($"Seed {reserved} is the calibration seed and must not be an evaluation seed.");
        if (baseModel is not null && Path.GetFullPath(baseModel).StartsWith(Path.GetFullPath(work) + "/", StringComparison.Ordinal))
            throw new ArgumentException("--base-model must not lie inside the output's work/ folder, which each run recreates.");
        if (Directory.Exists(work))
            Directory.Delete(work, true);
        Directory.CreateDirectory(work);
        var corpus = Corpus.Load(corpusDirectory);
        var (modelDir, baseSummary) = baseModel is null
            ? PretrainBase(corpus, Path.Combine(work, "base-model"), cancellation)
            : ReuseBase(corpus, baseModel);

        var rows = new List<ResultRow>();
        var adapters = new List<AdapterPreparation>();
        using var model = LlamaModel.Load(modelDir, ComputePrecision.Float32, "auto");
        var tokenizer = ModelTokenizer.TryLoad(modelDir, model.Config)!;
        DampingCalibration? calibration = null;
        if (_settings.CalibrationSeed is int calibrationSeed)
        {
            if (_settings.Seeds.Contains(calibrationSeed))
                throw new ArgumentException($"The calibration seed {calibrationSeed} must not be an evaluation seed.");
            calibration = Calibrate(calibrationSeed, corpus, modelDir, model, tokenizer, Path.Combine(work, $"calibration-{calibrationSeed}"), cancellation);
            _settings = _settings with { Dampings = new Dictionary<string, double>(calibration.Chosen) };
        }
        foreach (int seed in _settings.Seeds)
        {
            var (prep, seedRows) = RunSeed(seed, corpus, modelDir, model, tokenizer, Path.Combine(work, $"seed-{seed}"), cancellation);
            adapters.Add(prep);
            rows.AddRange(seedRows);
        }
        var results = new ExperimentResults(_settings, command, started, _clock.Elapsed.TotalSeconds, baseSummary, calibration, adapters, rows,
            $"{Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}, {model.Device}");
        return results;
    }

    private void Log(string message) => log?.Report($"[{_clock.Elapsed:hh\\:mm\\:ss}] {message}");

    private (string ModelDirectory, BaseModelSummary Summary) PretrainBase(Corpus corpus, string directory, CancellationToken cancellation)
    {
        Log($"corpus: {corpus.Text.Length:N0} characters from {corpus.Files.Count} files in {corpus.Directory} (sha256 {corpus.Sha256[..12]}…)");
        var config = _settings.BaseConfig;
        string tokenizerFile = Path.Combine(Path.GetDirectoryName(directory)!, "tokenizer.json");
        ByteLevelBpeTrainer.Train(corpus.Text, _settings.VocabSize, tokenizerFile);
        var tokenizer = ModelTokenizer.FromTokenizerJson(tokenizerFile, config);
        var tokens = tokenizer.Encode(corpus.Text);
        Log($"tokenizer: byte-level BPE, {_settings.VocabSize} ids, {tokens.Length:N0} tokens ({(double)corpus.Text.Length / tokens.Length:F2} characters/token)");
        var result = BaseModelTrainer.Pretrain(new PretrainOptions
        {
            Config = config,
            OutputDirectory = directory,
            Steps = _settings.PretrainSteps,
            BatchSize = _settings.PretrainBatch,
            SequenceLength = _settings.PretrainSequence,
            LearningRate = _settings.PretrainLearningRate,
            Seed = 1,
            Device = "auto",
        }, tokens, new Progress(p => Log($"pretraining step {p.Step}/{p.Steps}: loss {p.TrainLoss:F3}")), cancellation);
        File.Copy(tokenizerFile, Path.Combine(directory, "tokenizer.json"));
        Log($"base model: {result.Parameters:N0} weights, validation loss {result.InitialValidationLoss:F3} → {result.FinalValidationLoss:F3} nats/token, " +
            $"{result.Seconds:F0} s ({result.TokensPerSecond:N0} tokens/s)");
        var summary = new BaseModelSummary(result.Parameters, _settings.VocabSize, corpus.Text.Length, result.TrainTokens, result.ValidationTokens,
            result.InitialValidationLoss, result.FinalValidationLoss, result.Seconds, corpus.Sha256, corpus.Files, corpus.Directory);
        File.WriteAllText(Path.Combine(directory, "pretraining.json"), JsonSerializer.Serialize(summary, ExperimentReport.Json));
        return (directory, summary);
    }

    private (string, BaseModelSummary) ReuseBase(Corpus corpus, string directory)
    {
        var summary = Path.Combine(directory, "pretraining.json");
        if (!File.Exists(Path.Combine(directory, "tokenizer.json")) || !File.Exists(summary))
            throw new FileNotFoundException($"'{directory}' is not a base model written by `eraser experiment run` (tokenizer.json and pretraining.json are needed).");
        var base_ = JsonSerializer.Deserialize<BaseModelSummary>(File.ReadAllText(summary), ExperimentReport.Json)!;
        if (base_.CorpusSha256 != corpus.Sha256)
            throw new InvalidDataException($"'{directory}' was pretrained on another corpus (sha256 {base_.CorpusSha256[..12]}…).");
        Log($"base model: reusing {directory} ({base_.Parameters:N0} weights, validation loss {base_.FinalValidationLoss:F3})");
        return (directory, base_);
    }

    /// <summary>The original adapter of a seed, its gradient cache and the warm engine.</summary>
    private sealed class PreparedSeed(SeedContext context, AdapterPreparation preparation) : IDisposable
    {
        public SeedContext Context { get; } = context;
        public AdapterPreparation Preparation { get; } = preparation;
        public void Dispose()
        {
            Context.Engine.Dispose();
            Context.EngineEf.Dispose();
        }
    }

    private PreparedSeed Prepare(int seed, Corpus corpus, string modelDir, LlamaModel model, ModelTokenizer tokenizer, string dir,
        CancellationToken cancellation)
    {
        Directory.CreateDirectory(dir);
        var task = MemorisationTask.Create(corpus, _settings, seed);
        string trainFile = Path.Combine(dir, "train.jsonl");
        WriteJsonl(trainFile, task.Training);

        Log($"seed {seed}: fine-tuning the original adapter on {task.Training.Count} samples");
        string original = Path.Combine(dir, "adapter");
        var trained = Train(modelDir, trainFile, original, seed, []);
        var (layout, theta0) = LoraAdapterFiles.Read(original, model.Config);
        var runtime = new LoraRuntime(model, layout);
        Log($"seed {seed}: adapter trained in {trained.TrainSeconds:F1} s: loss {trained.Result.InitialMeanLoss:F3} → {trained.Result.FinalMeanLoss:F4}, " +
            $"gradient norm of the objective {trained.Result.FinalGradientNorm:G3}; building the gradient cache (P = {layout.ParameterCount:N0})");

        string cacheDir = Path.Combine(dir, "cache"), gradientCacheDir = Path.Combine(dir, "cache-gradients");
        var cacheWatch = Stopwatch.StartNew();
        GradientCacheBuilder.Build(CacheOptions(modelDir, original, trainFile, cacheDir, seed, CurvatureMode.Sampled), cancellation: cancellation);
        double cacheSeconds = cacheWatch.Elapsed.TotalSeconds;
        cacheWatch.Restart();
        GradientCacheBuilder.Build(CacheOptions(modelDir, original, trainFile, gradientCacheDir, seed, CurvatureMode.None), cancellation: cancellation);
        double gradientCacheSeconds = cacheWatch.Elapsed.TotalSeconds;
        long cacheBytes = Directory.EnumerateFiles(cacheDir).Sum(f => new FileInfo(f).Length);

        var loadWatch = Stopwatch.StartNew();
        var compute = new ComputeOptions { Device = "auto", Precision = ComputePrecision.Float32 };
        InfluenceEngine? engine = null, engineEf = null;
        try
        {
            engine = InfluenceEngine.Load(PeftAdapter.Open(original), GradientCache.Open(cacheDir), compute, cancellation: cancellation);
            engineEf = InfluenceEngine.Load(PeftAdapter.Open(original), GradientCache.Open(gradientCacheDir), compute, cancellation: cancellation);
            engine.Warm(cancellation: cancellation);
            engineEf.Warm(cancellation: cancellation);
            double loadSeconds = loadWatch.Elapsed.TotalSeconds;
            for (int i = 0; i < theta0.Length; i++)
                if (Math.Abs(engine.Theta0[i] - theta0[i]) > 1e-6 * (1 + Math.Abs(theta0[i])))
                    throw new InvalidOperationException("The engine's parameter order differs from the adapter layout's.");
            var prep = new AdapterPreparation(seed, task.Training.Count, layout.ParameterCount, trained.TrainSeconds, trained.Result.FinalMeanLoss,
                trained.Result.FinalGradientNorm, cacheSeconds, cacheBytes, gradientCacheSeconds, loadSeconds);
            Log($"seed {seed}: caches {cacheSeconds:F1} s ({cacheBytes / 1e6:F1} MB) + {gradientCacheSeconds:F1} s (gradients only), engines warm in {loadSeconds:F2} s");
            var context = new SeedContext(seed, task, modelDir, trainFile, dir, runtime, engine, engineEf, theta0,
                Tokenize(task.Training, tokenizer), Tokenize(task.Test, tokenizer), tokenizer);
            return new PreparedSeed(context, prep);
        }
        catch
        {
            engine?.Dispose();
            engineEf?.Dispose();
            throw;
        }
    }

    private DampingCalibration Calibrate(int seed, Corpus corpus, string modelDir, LlamaModel model, ModelTokenizer tokenizer, string dir,
        CancellationToken cancellation)
    {
        var watch = Stopwatch.StartNew();
        using var prepared = Prepare(seed, corpus, modelDir, model, tokenizer, dir, cancellation);
        var c = prepared.Context;
        var tasks = new List<CalibrationTask>();
        var points = new List<CalibrationPoint>();
        var chosen = new Dictionary<string, double>();
        foreach (var (taskName, removed, corrected) in TaskKinds(c.Task, [_settings.CalibrationFraction]))
        {
            string taskDir = Path.Combine(dir, $"{taskName}");
            Directory.CreateDirectory(taskDir);
            using var edits = PrepareEdits(c, taskDir, removed, corrected, cancellation);
            var retrained = RetrainOn(c, taskDir, removed, corrected).Theta;
            double noneForget = c.Runtime.Losses(edits.Forget, c.Theta0).Average();
            double retrainForget = c.Runtime.Losses(edits.Forget, retrained).Average();
            double retrainRetain = c.Runtime.Losses(edits.Retain, retrained).Average();
            tasks.Add(new CalibrationTask(taskName, edits.Count, noneForget, retrainForget, retrainRetain));
            Log($"calibration (seed {seed}, {taskName}, {edits.Count} samples): forget loss none {noneForget:F3} / retrain {retrainForget:F3}, retain {retrainRetain:F3}");
            foreach (var method in EngineVariants.Where(m => _settings.Methods.Contains(m)))
            {
                var candidates = new List<CalibrationPoint>();
                foreach (double damping in method == EraserExactCg ? _settings.ExactDampingGrid : _settings.DampingGrid)
                {
                    var (theta, seconds, _) = SolveVariant(c, edits, method, damping, cancellation);
                    double forgetLoss = c.Runtime.Losses(edits.Forget, theta).Average();
                    var point = new CalibrationPoint(taskName, method, damping, forgetLoss, (forgetLoss - noneForget) / (retrainForget - noneForget),
                        c.Runtime.Losses(edits.Retain, theta).Average(), seconds);
                    candidates.Add(point);
                    Log($"calibration ({taskName}): {method} damping {damping:G3}: effect ratio {point.EffectRatio:F2}, retain loss {point.RetainLoss:F3}");
                }
                // Closest to retraining on both the forget-set effect and the retain loss; ties to the smaller damping.
                var best = candidates.OrderBy(p => CalibrationDistance(p, retrainRetain)).ThenBy(p => p.Damping).First();
                chosen[$"{taskName}/{method}"] = best.Damping;
                points.AddRange(candidates);
                Log($"calibration ({taskName}): {method} → damping {best.Damping:G3} (effect ratio {best.EffectRatio:F2}, retain loss {best.RetainLoss:F3})");
            }
        }
        return new DampingCalibration(seed, tasks, points, chosen, watch.Elapsed.TotalSeconds);
    }

    /// <summary>The task kinds of the settings: (name, removed ids, corrected samples).</summary>
    private IEnumerable<(string Task, List<string> Removed, List<TextSample> Corrected)> TaskKinds(MemorisationTask task, double[] removalFractions)
    {
        int n = task.Training.Count;
        if (_settings.Tasks.Contains("removal"))
            foreach (double fraction in removalFractions)
                yield return ("removal", task.RemovableIds.Take(Math.Max(1, (int)Math.Round(fraction * n))).ToList(), []);
        if (_settings.Tasks.Contains("query-modification"))
            yield return ("query-modification", [], task.NoisyPromptIds.Select(id => task.Clean[id]).ToList());
        if (_settings.Tasks.Contains("response-correction"))
            yield return ("response-correction", [], task.CorruptedResponseIds.Select(id => task.Clean[id]).ToList());
    }

    /// <summary>One task's edits: the forget and retain sets and, for corrections, the corrected samples' rows
    /// computed at θ₀ exactly as `eraser cache build` computes the cache (for each cached variant).</summary>
    private sealed class TaskEdits(List<string> removed, List<TokenizedSample> corrected, List<TokenizedSample> forget, List<TokenizedSample> retain)
        : IDisposable
    {
        public List<string> Removed { get; } = removed;
        public List<TokenizedSample> Corrected { get; } = corrected;
        public List<TokenizedSample> Forget { get; } = forget;
        public List<TokenizedSample> Retain { get; } = retain;
        public int Count => Removed.Count + Corrected.Count;
        public EditSet Edits { get; set; } = EditSet.Empty.Remove(removed);
        public GradientCache? SampledRows { get; set; }
        public GradientCache? GradientRows { get; set; }
        public double SampledRowsSeconds { get; set; }
        public double GradientRowsSeconds { get; set; }

        public void Dispose()
        {
            SampledRows?.Dispose();
            GradientRows?.Dispose();
        }
    }

    private TaskEdits PrepareEdits(SeedContext c, string taskDir, List<string> removed, List<TextSample> corrected, CancellationToken cancellation)
    {
        var editedIds = removed.Concat(corrected.Select(s => s.Id)).ToHashSet(StringComparer.Ordinal);
        var correctedTokens = Tokenize(corrected, c.Tokenizer);
        var forget = removed.Count > 0 ? c.Training.Where(s => editedIds.Contains(s.Id)).ToList() : correctedTokens;
        var edits = new TaskEdits(removed, correctedTokens, forget, c.Training.Where(s => !editedIds.Contains(s.Id)).ToList());
        if (corrected.Count == 0)
            return edits;
        try
        {
            string file = Path.Combine(taskDir, "corrected.jsonl");
            WriteJsonl(file, corrected);
            string adapter = Path.Combine(c.Directory, "adapter");
            var watch = Stopwatch.StartNew();
            GradientCacheBuilder.Build(CacheOptions(c.ModelDirectory, adapter, file, Path.Combine(taskDir, "replacements"), c.Seed, CurvatureMode.Sampled),
                cancellation: cancellation);
            edits.SampledRows = GradientCache.Open(Path.Combine(taskDir, "replacements"));
            edits.SampledRowsSeconds = watch.Elapsed.TotalSeconds;
            watch.Restart();
            GradientCacheBuilder.Build(CacheOptions(c.ModelDirectory, adapter, file, Path.Combine(taskDir, "replacements-gradients"), c.Seed, CurvatureMode.None),
                cancellation: cancellation);
            edits.GradientRows = GradientCache.Open(Path.Combine(taskDir, "replacements-gradients"));
            edits.GradientRowsSeconds = watch.Elapsed.TotalSeconds;
            edits.Edits = edits.Edits.Replace(corrected.Select(s => s.Id), "corrected");
            return edits;
        }
        catch
        {
            edits.Dispose();
            throw;
        }
    }

    /// <summary>θ of an engine variant (or the paper's solver) for a task's edits, with the seconds its update costs.</summary>
    private (double[] Theta, double Seconds, string Note) SolveVariant(SeedContext c, TaskEdits e, string method, double damping, CancellationToken cancellation)
    {
        switch (method)
        {
            case EraserExactCg:
            {
                var r = ExactInfluence.Solve(c.Runtime, c.Theta0, c.Training, e.Removed, e.Corrected, _settings.L2 + damping,
                    _settings.ExactCgTolerance, _settings.ExactCgMaxIterations);
                return (r.Theta, r.Seconds, $"{r.Iterations} iterations, residual {r.RelativeResidual:E1}{(r.NegativeCurvature ? ", stopped at negative curvature" : "")}, λ {r.Lambda:G3}");
            }
            case EraserDirect or EraserDirectEf or LlmEraser:
            {
                bool sampled = method != EraserDirectEf;
                var rows = sampled ? e.SampledRows : e.GradientRows;
                var update = (sampled ? c.Engine : c.EngineEf).Compute(e.Edits, rows is null ? null : _ => rows,
                    new SolverOptions { Solver = method == LlmEraser ? SolverKind.LlmEraser : SolverKind.Direct, Damping = damping, RequireConvergence = method != LlmEraser }, cancellation: cancellation);
                return (update.Theta, update.Report.Seconds + (sampled ? e.SampledRowsSeconds : e.GradientRowsSeconds),
                    $"residual {update.Report.RelativeResidual:E1}, λ {update.Report.Lambda:G3}");
            }
            default:
                throw new ArgumentException($"'{method}' is not an engine method.");
        }
    }

    private (double[] Theta, double Seconds) RetrainOn(SeedContext c, string taskDir, List<string> removed, List<TextSample> corrected)
    {
        var byId = corrected.ToDictionary(s => s.Id, StringComparer.Ordinal);
        string data = Path.Combine(taskDir, "edited.jsonl");
        WriteJsonl(data, c.Task.Training.Where(s => !removed.Contains(s.Id)).Select(s => byId.GetValueOrDefault(s.Id) ?? s));
        var r = Train(c.ModelDirectory, data, Path.Combine(taskDir, "retrain"), c.Seed, []);
        return (LoraAdapterFiles.Read(Path.Combine(taskDir, "retrain"), c.Runtime.Model.Config).Theta, r.TrainSeconds);
    }

    /// <summary>|log effect ratio| + |log(retain loss / retraining's)|: 0 when the update matches retraining on both.</summary>
    public static double CalibrationDistance(CalibrationPoint p, double retrainRetain) =>
        Math.Abs(Math.Log(Math.Max(p.EffectRatio, 1e-3))) + Math.Abs(Math.Log(p.RetainLoss / retrainRetain));

    private (AdapterPreparation, List<ResultRow>) RunSeed(int seed, Corpus corpus, string modelDir, LlamaModel model, ModelTokenizer tokenizer,
        string dir, CancellationToken cancellation)
    {
        using var prepared = Prepare(seed, corpus, modelDir, model, tokenizer, dir, cancellation);
        var rows = new List<ResultRow>();
        int n = prepared.Context.Training.Count;
        foreach (var (taskName, removed, corrected) in TaskKinds(prepared.Context.Task, _settings.RemovalFractions))
            rows.AddRange(RunTask(prepared.Context, taskName, (double)(removed.Count + corrected.Count) / n, removed, corrected, cancellation));
        return (prepared.Preparation, rows);
    }

    private sealed record SeedContext(int Seed, MemorisationTask Task, string ModelDirectory, string TrainFile, string Directory,
        LoraRuntime Runtime, InfluenceEngine Engine, InfluenceEngine EngineEf, double[] Theta0, IReadOnlyList<TokenizedSample> Training,
        IReadOnlyList<TokenizedSample> Test, ModelTokenizer Tokenizer);

    private List<ResultRow> RunTask(SeedContext c, string taskName, double fraction, List<string> removed, List<TextSample> corrected,
        CancellationToken cancellation)
    {
        string label = $"seed {c.Seed}: {taskName} {fraction:P0}";
        string taskDir = Path.Combine(c.Directory, $"{taskName}-{removed.Count + corrected.Count}");
        Directory.CreateDirectory(taskDir);
        var thetas = new Dictionary<string, (double[] Theta, double Seconds, long Peak, string? Note)>();

        // Retraining: same initialisation, seed and schedule on the edited data (the gold standard).
        Measure(thetas, Retrain, label, () =>
        {
            var (theta, seconds) = RetrainOn(c, taskDir, removed, corrected);
            return (theta, seconds, null);
        });
        thetas[None] = ((double[])c.Theta0.Clone(), 0, ProcessPeak.Current(), null);

        using var edits = PrepareEdits(c, taskDir, removed, corrected, cancellation);
        foreach (var method in new[] { EraserDirect, EraserDirectEf, LlmEraser, EraserExactCg })
            Measure(thetas, method, label, () => SolveVariant(c, edits, method, _settings.DampingOf(taskName, method), cancellation));
        if (removed.Count > 0)
            Measure(thetas, GradientAscent, label, () =>
            {
                var watch = Stopwatch.StartNew();
                var theta = GradientAscentOn(c.Runtime, c.Theta0, edits.Forget);
                return (theta, watch.Elapsed.TotalSeconds, $"{_settings.GradientAscentSteps} Adam steps, lr {_settings.LearningRate:G3}");
            });

        var rows = new List<ResultRow>();
        var retrained = thetas[Retrain].Theta;
        // LoRA's factors are not identifiable (B·A = (B·M)(M⁻¹·A)), so distances are taken between the weight changes
        // ΔW = scaling·B·A the adapters make, not between θ vectors.
        var retrainedDelta = WeightDelta(c.Runtime.Layout, retrained);
        double reference = Distance(WeightDelta(c.Runtime.Layout, c.Theta0), retrainedDelta);
        foreach (var (method, (theta, seconds, peak, note)) in thetas.OrderBy(kv => Array.IndexOf(Methods, kv.Key)))
        {
            var (fl, fe, _) = c.Runtime.Evaluate(edits.Forget, theta);
            var (rl, re, _) = c.Runtime.Evaluate(edits.Retain, theta);
            var (tl, _, _) = c.Runtime.Evaluate(c.Test, theta);
            rows.Add(new ResultRow(taskName, fraction, method, c.Seed, fl.Average(), rl.Average(), tl.Average(), fe.Average(b => b ? 1.0 : 0.0),
                seconds, peak, re.Average(b => b ? 1.0 : 0.0), reference > 0 ? Distance(WeightDelta(c.Runtime.Layout, theta), retrainedDelta) / reference : 0, edits.Count, note));
        }
        Log($"{label}: forget loss " + string.Join(" / ", rows.Select(r => $"{r.Method} {r.ForgetLoss:F3}")) +
            "; retain loss " + string.Join(" / ", rows.Select(r => $"{r.RetainLoss:F3}")));
        return rows;
    }

    private void Measure(Dictionary<string, (double[] Theta, double Seconds, long Peak, string? Note)> into, string method, string label,
        Func<(double[] Theta, double Seconds, string? Note)> run)
    {
        if (method is not (Retrain or None) && !_settings.Methods.Contains(method))
            return;
        using var peak = new ProcessPeak();
        var (theta, seconds, note) = run();
        into[method] = (theta, seconds, peak.Stop(), note);
        Log($"{label}: {method} {seconds:F3} s{(note is null ? "" : $" ({note})")}");
    }

    private CacheBuildOptions CacheOptions(string modelDir, string adapter, string data, string output, int seed, CurvatureMode curvature) => new()
    {
        ModelDirectory = modelDir,
        AdapterDirectory = adapter,
        DataFile = data,
        OutputDirectory = output,
        L2 = _settings.L2,
        Curvature = curvature,
        Seed = (ulong)seed,
        Device = "auto",
    };

    private (TrainResult Result, double TrainSeconds) Train(string modelDir, string data, string output, int seed, IReadOnlyCollection<string> exclude)
    {
        var result = LoraTrainer.Train(new TrainOptions
        {
            ModelDirectory = modelDir,
            DataFile = data,
            OutputDirectory = output,
            Lora = _settings.Lora,
            Epochs = _settings.Epochs,
            BatchSize = _settings.BatchSize,
            LearningRate = _settings.LearningRate,
            Schedule = "linear",
            L2 = _settings.L2,
            Seed = seed,
            Device = "auto",
            Exclude = exclude,
        });
        // The training epochs only: model loading and the final-gradient report are not part of retraining's cost.
        return (result, result.Epochs.Sum(e => e.Seconds));
    }

    /// <summary>Gradient ascent on the forget set's mean loss with Adam at the fine-tuning learning rate (a common
    /// unlearning baseline: fast, but with no guarantee of matching retraining).</summary>
    private double[] GradientAscentOn(LoraRuntime runtime, double[] theta0, IReadOnlyList<TokenizedSample> forget)
    {
        var theta = (double[])theta0.Clone();
        var m = new double[theta.Length];
        var v = new double[theta.Length];
        for (int step = 1; step <= _settings.GradientAscentSteps; step++)
        {
            var (_, g) = runtime.Gradient(forget, theta);
            double c1 = 1 - Math.Pow(0.9, step), c2 = 1 - Math.Pow(0.999, step);
            for (int i = 0; i < theta.Length; i++)
            {
                double ascent = -g[i] / forget.Count;
                m[i] = 0.9 * m[i] + 0.1 * ascent;
                v[i] = 0.999 * v[i] + 0.001 * ascent * ascent;
                theta[i] -= _settings.LearningRate * (m[i] / c1) / (Math.Sqrt(v[i] / c2) + 1e-8);
            }
        }
        return theta;
    }

    /// <summary>The concatenated ΔW = scaling · B · A of every adapted module.</summary>
    public static double[] WeightDelta(LoraLayout layout, double[] theta)
    {
        var result = new List<double>();
        foreach (var m in layout.Modules)
            for (int o = 0; o < m.Out; o++)
                for (int i = 0; i < m.In; i++)
                {
                    double sum = 0;
                    for (int k = 0; k < m.Rank; k++)
                        sum += theta[m.OffsetB + (long)o * m.Rank + k] * theta[m.OffsetA + (long)k * m.In + i];
                    result.Add(m.Scaling * sum);
                }
        return result.ToArray();
    }

    private static double Distance(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++)
            s += (a[i] - b[i]) * (a[i] - b[i]);
        return Math.Sqrt(s);
    }

    private static List<TokenizedSample> Tokenize(IEnumerable<TextSample> samples, ModelTokenizer tokenizer) =>
        samples.Select(s =>
        {
            var (p, r) = tokenizer.EncodeSample(s.Prompt, s.Response);
            return new TokenizedSample(s.Id, p, r);
        }).ToList();

    private static void WriteJsonl(string path, IEnumerable<TextSample> samples) =>
        File.WriteAllLines(path, samples.Select(s => JsonSerializer.Serialize(new { id = s.Id, prompt = s.Prompt, response = s.Response })));

    private sealed class Progress(Action<PretrainProgress> report) : IProgress<PretrainProgress>
    {
        public void Report(PretrainProgress value) => report(value);
    }
}
