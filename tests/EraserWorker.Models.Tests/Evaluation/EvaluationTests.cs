using System.Text.Json;
using System.Text.RegularExpressions;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence;
using EraserWorker.Evaluation;
using EraserWorker.Models.Tests.TestSupport;

namespace EraserWorker.Models.Tests.Evaluation;

public sealed class EvaluationTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static LlamaConfig Config(int vocab) => RandomLlama.Tiny(vocab, hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 64, tied: true) with
    {
        BosTokenId = ByteLevelBpeTrainer.BosId,
        EosTokenId = ByteLevelBpeTrainer.EosId,
    };

    [Fact]
    public void Bpe_tokenizer_round_trips_text_and_merges_the_most_frequent_pair_first()
    {
        string text = "the theme of the thesis: these then there. Naïve café — ünïcödé ✓ 42 + 17\n\tindent";
        string path = _temp.Sub("tokenizer.json");
        ByteLevelBpeTrainer.Train(text, 259 + 12, path);
        var tokenizer = ModelTokenizer.FromTokenizerJson(path, Config(259 + 12));

        foreach (var s in new[] { text, "unseen words: zebra quux", "ü✓", " leading space", "" })
            Assert.Equal(s, tokenizer.Decode(tokenizer.Encode(s)));
        Assert.True(tokenizer.Encode(text).Length < System.Text.Encoding.UTF8.GetByteCount(text), "merges must shorten the text");

        // The first merge is the most frequent adjacent byte pair inside the pre-tokenised words, counted here directly.
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (Match m in Regex.Matches(text, ByteLevelBpeTrainer.SplitPattern))
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(m.Value);
            for (int i = 0; i + 1 < bytes.Length; i++)
            {
                string key = $"{bytes[i]:X2}{bytes[i + 1]:X2}";
                counts[key] = counts.GetValueOrDefault(key) + 1;
            }
        }
        var top = counts.Max(kv => kv.Value);
        var map = ByteLevelBpeTrainer.ByteToChar();
        var json = JsonDocument.Parse(File.ReadAllText(path));
        var first = json.RootElement.GetProperty("model").GetProperty("merges")[0];
        string pair = string.Concat(first.EnumerateArray().Select(e => e.GetString()));
        var firstBytes = pair.Select(c => Array.IndexOf(map, c)).ToArray();
        Assert.Equal(top, counts[$"{firstBytes[0]:X2}{firstBytes[1]:X2}"]);

        // Samples: [BOS] + prompt, response + [EOS].
        var (p, r) = tokenizer.EncodeSample("The secret of x is", " y.");
        Assert.Equal(ByteLevelBpeTrainer.BosId, p[0]);
        Assert.Equal(ByteLevelBpeTrainer.EosId, r[^1]);
    }

    [Fact]
    public void Pretraining_on_the_corpus_lowers_held_out_loss_and_writes_a_loadable_model()
    {
        var corpus = Corpus.Load();
        string text = corpus.Text[..30_000];
        string tokenizerPath = _temp.Sub("tokenizer.json");
        ByteLevelBpeTrainer.Train(text, 320, tokenizerPath);
        var config = Config(320);
        var tokens = ModelTokenizer.FromTokenizerJson(tokenizerPath, config).Encode(text);
        var result = BaseModelTrainer.Pretrain(new PretrainOptions
        {
            Config = config, OutputDirectory = _temp.Sub("base"), Steps = 60, BatchSize = 8, SequenceLength = 32, LearningRate = 1e-2,
            WarmupSteps = 10, Device = "cpu",
        }, tokens);
        Assert.InRange(result.InitialValidationLoss, Math.Log(320) - 0.5, Math.Log(320) + 0.5); // small init: ≈ ln V
        Assert.True(result.FinalValidationLoss < result.InitialValidationLoss - 1.0, $"{result.InitialValidationLoss} → {result.FinalValidationLoss}");

        // The saved folder is a Hugging Face model that reproduces the reported held-out loss, recomputed here.
        using var model = LlamaModel.Load(_temp.Sub("base"), ComputePrecision.Float64, "cpu");
        int start = (int)(tokens.Length * 0.95), seq = 32;
        double sum = 0;
        long n = 0;
        for (int s = start; s + seq + 1 <= tokens.Length; s += seq)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            var window = TorchSharp.torch.tensor(tokens.Skip(s).Take(seq + 1).Select(t => (long)t).ToArray()).unsqueeze(0);
            var logp = model.Forward(window.narrow(1, 0, seq), null).log_softmax(-1)[0].data<double>().ToArray();
            for (int k = 0; k < seq; k++)
                sum -= logp[k * 320 + tokens[s + k + 1]];
            n += seq;
        }
        Assert.Equal(result.FinalValidationLoss, sum / n, 1e-3);
    }

    [Fact]
    public void Memorisation_task_is_seeded_and_plants_disjoint_defects()
    {
        var corpus = Corpus.Load();
        var settings = ExperimentSettings.Quick;
        var a = MemorisationTask.Create(corpus, settings, 3);
        var b = MemorisationTask.Create(corpus, settings, 3);
        var c = MemorisationTask.Create(corpus, settings, 4);
        Assert.Equal(a.Training, b.Training);
        Assert.NotEqual(a.Training, c.Training);
        Assert.Equal(settings.TrainSamples, a.Training.Count);
        Assert.Equal(settings.TestSamples, a.Test.Count);
        Assert.Equal((int)Math.Round(0.1 * settings.TrainSamples), a.NoisyPromptIds.Count);
        Assert.Equal((int)Math.Round(0.2 * settings.TrainSamples), a.CorruptedResponseIds.Count);
        Assert.Empty(a.NoisyPromptIds.Intersect(a.CorruptedResponseIds));
        Assert.Empty(a.RemovableIds.Intersect(a.NoisyPromptIds.Concat(a.CorruptedResponseIds)));
        var byId = a.Training.ToDictionary(s => s.Id);
        foreach (var id in a.NoisyPromptIds)
        {
            Assert.NotEqual(a.Clean[id].Prompt, byId[id].Prompt);
            Assert.Equal(a.Clean[id].Response, byId[id].Response);
        }
        foreach (var id in a.CorruptedResponseIds)
        {
            Assert.Equal(a.Clean[id].Prompt, byId[id].Prompt);
            Assert.NotEqual(a.Clean[id].Response, byId[id].Response);
        }
        // every key is distinct, and no held-out key was trained on
        var keys = a.Training.Concat(a.Test).Select(s => a.Clean.TryGetValue(s.Id, out var clean) ? clean.Prompt : s.Prompt).ToList();
        Assert.Equal(keys.Count, keys.Distinct().Count());
    }

    [Fact]
    public void Settings_overrides_are_validated()
    {
        var changed = ExperimentSettings.Override(ExperimentSettings.Quick, """{"epochs": 7, "seeds": [9]}""", "test.json");
        Assert.Equal(7, changed.Epochs);
        Assert.Equal([9], changed.Seeds);
        Assert.Equal(ExperimentSettings.Quick.L2, changed.L2);
        var e = Assert.Throws<InvalidDataException>(() => ExperimentSettings.Override(ExperimentSettings.Quick, """{"epoch": 7}""", "test.json"));
        Assert.Contains("test.json", e.Message);
    }

    [Fact]
    public void A_tiny_experiment_reports_every_task_and_method_and_its_engine_rows_match_an_offline_unlearn()
    {
        var settings = ExperimentSettings.Quick with
        {
            Name = "test",
            VocabSize = 300, Hidden = 32, Layers = 2, Heads = 4, KvHeads = 2, Intermediate = 64,
            PretrainSteps = 30, PretrainBatch = 4, PretrainSequence = 48,
            TrainSamples = 40, TestSamples = 6, Seeds = [1],
            Rank = 2, Alpha = 4, Epochs = 8, BatchSize = 8,
            DampingGrid = [0, 10], ExactDampingGrid = [10], ExactCgMaxIterations = 3, GradientAscentSteps = 2,
        };
        string output = _temp.Sub("run");
        var results = new ExperimentRunner(settings, output).Run("test");
        ExperimentReport.Write(results, output);

        // 3 removal fractions × 7 methods + 2 replacement tasks × 6 methods (no gradient ascent)
        Assert.Equal(3 * 7 + 2 * 6, results.Rows.Count);
        foreach (var task in new[] { "removal", "query-modification", "response-correction" })
            foreach (var method in ExperimentRunner.Methods.Where(m => task == "removal" || m != ExperimentRunner.GradientAscent))
                Assert.Contains(results.Rows, r => r.Task == task && r.Method == method);
        Assert.All(results.Rows.Where(r => r.Method == ExperimentRunner.Retrain), r => Assert.Equal(0, r.DistanceToRetrain));
        Assert.All(results.Rows.Where(r => r.Method == ExperimentRunner.None), r => Assert.Equal(1, r.DistanceToRetrain, 12));
        Assert.All(results.Rows, r => Assert.True(double.IsFinite(r.ForgetLoss) && r.PeakMemoryBytes > 0));
        Assert.NotNull(results.Calibration);
        Assert.Equal(9, results.Calibration!.Chosen.Count);

        // Independent path: `eraser unlearn`'s library call on the run's own adapter and cache, with the calibrated
        // damping, gives the eraser-direct row's forget loss.
        var task1 = MemorisationTask.Create(Corpus.Load(), settings, 1);
        var removed = task1.RemovableIds.Take(1).ToList();
        string seedDir = Path.Combine(output, "work", "seed-1");
        OfflineUnlearning.Run(new OfflineUnlearningJob(Path.Combine(seedDir, "adapter"), Path.Combine(seedDir, "cache"), removed, null,
            _temp.Sub("offline"), new SolverOptions { Solver = SolverKind.Direct, Damping = results.Calibration.Chosen["removal/eraser-direct"] },
            new ComputeOptions { Device = "cpu" }));
        string modelDir = Path.Combine(output, "work", "base-model");
        using var model = LlamaModel.Load(modelDir, ComputePrecision.Float32, "cpu");
        var tokenizer = ModelTokenizer.TryLoad(modelDir, model.Config)!;
        var (layout, theta) = LoraAdapterFiles.Read(_temp.Sub("offline"), model.Config);
        var forget = task1.Training.Where(s => removed.Contains(s.Id)).Select(s =>
        {
            var (p, r) = tokenizer.EncodeSample(s.Prompt, s.Response);
            return new TokenizedSample(s.Id, p, r);
        }).ToList();
        double offline = new LoraRuntime(model, layout).Losses(forget, theta).Average();
        var row = results.Rows.Single(r => r.Task == "removal" && r.Edited == 1 && r.Method == ExperimentRunner.EraserDirect);
        Assert.Equal(row.ForgetLoss, offline, 1e-4);

        // Outputs: results.json with the row fields, report.md with every task, two PNG plots.
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, ExperimentReport.ResultsFile)));
        var first = json.RootElement.GetProperty("rows")[0];
        foreach (var field in new[] { "task", "fraction", "method", "seed", "forgetLoss", "retainLoss", "testLoss", "forgetExactMatch", "seconds", "peakMemoryBytes" })
            Assert.True(first.TryGetProperty(field, out _), field);
        string report = File.ReadAllText(Path.Combine(output, ExperimentReport.ReportFile));
        foreach (var heading in new[] { "### removal", "### query-modification", "### response-correction", "## Targets", "## Damping" })
            Assert.Contains(heading, report);
        foreach (var png in new[] { ExperimentReport.ForgetRetainPlot, ExperimentReport.TimePlot })
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(Path.Combine(output, png))[..4]);

        // `eraser experiment report` re-renders the same report from results.json alone.
        ExperimentReport.WriteReport(ExperimentReport.Read(Path.Combine(output, ExperimentReport.ResultsFile)), _temp.Sub("again"));
        Assert.Equal(report, File.ReadAllText(Path.Combine(_temp.Sub("again"), ExperimentReport.ReportFile)));
    }
}
