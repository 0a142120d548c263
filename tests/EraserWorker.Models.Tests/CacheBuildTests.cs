using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Models.Tests.TestSupport;

namespace EraserWorker.Models.Tests;

/// <summary><c>eraser cache build</c>'s library: SPEC §2 output, the rows, resumption.</summary>
public sealed class CacheBuildTests : IDisposable
{
    private readonly TinyWorld _world = new(samples: 12);

    public void Dispose() => _world.Dispose();

    private CacheBuildOptions Options(string output, double l2 = 0.5) => new()
    {
        ModelDirectory = _world.ModelDirectory,
        AdapterDirectory = _world.AdapterDirectory,
        DataFile = _world.DataFile,
        OutputDirectory = output,
        L2 = l2,
        RowsPerShard = 5,
        BatchSize = 3,
        Device = "cpu",
        Seed = 9,
    };

    [Fact]
    public void The_cache_follows_spec_2_and_holds_each_samples_gradient_and_curvature_row()
    {
        string output = _world.Temp.Sub("cache");
        var result = GradientCacheBuilder.Build(Options(output));
        Assert.Equal(12, result.Samples);
        Assert.False(Directory.Exists(output + ".partial"));
        using var cache = GradientCache.Open(output);
        Assert.Equal(0.5, cache.L2);
        Assert.True(cache.HasCurvature);
        Assert.Equal(3, cache.Manifest.Shards.Count);
        Assert.Equal(_world.Layout.Parameters, cache.Parameters);
        Assert.Equal(_world.Samples.Select(s => s.Id).Order(), cache.Ids.Order());
        // every parameter is a tensor of the adapter, same shape: the adapter and the cache fit together
        var adapter = PeftAdapter.Open(_world.AdapterDirectory);
        foreach (var p in cache.Parameters)
            Assert.Equal(p.Shape, adapter.Header[p.Name].Shape);
        Assert.Equal("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", cache.Parameters[0].Name);

        using var model = _world.LoadModel(ComputePrecision.Float32);
        var runtime = _world.Runtime(model);
        foreach (var id in new[] { "s000", "s007", "s011" })
        {
            var sample = _world.Samples.Single(s => s.Id == id);
            var expected = runtime.PerSample([sample], _world.Theta, curvature: true, seed: 9);
            Assert.True(cache.TryGetRow(id, out int row));
            var g = cache.ReadRowDouble(CacheMatrix.Gradients, row);
            var c = cache.ReadRowDouble(CacheMatrix.Curvature, row);
            Assert.True(Vectors.RelativeError(g, expected.Gradient(0).ToArray().Select(x => (double)x).ToArray()) < 1e-5);
            Assert.True(Vectors.RelativeError(c, expected.CurvatureRow(0).ToArray().Select(x => (double)x).ToArray()) < 1e-5);
        }
    }

    [Fact]
    public void An_interrupted_build_resumes_and_gives_the_same_cache()
    {
        string fresh = _world.Temp.Sub("fresh");
        GradientCacheBuilder.Build(Options(fresh));

        string output = _world.Temp.Sub("resumed");
        using var cancel = new CancellationTokenSource();
        var stopAfterFirstShard = new SyncProgress(p =>
        {
            if (p.SamplesDone >= 6)
                cancel.Cancel();
        });
        Assert.ThrowsAny<OperationCanceledException>(() => GradientCacheBuilder.Build(Options(output), stopAfterFirstShard, cancel.Token));
        Assert.False(Directory.Exists(output));
        Assert.True(Directory.Exists(Path.Combine(output + ".partial", "part-00000")));

        // other settings are refused while the partial build exists
        Assert.Contains("other inputs or settings", Assert.Throws<IOException>(() => GradientCacheBuilder.Build(Options(output, l2: 1))).Message);

        var result = GradientCacheBuilder.Build(Options(output));
        Assert.Equal(5, result.ResumedSamples);
        foreach (var file in Directory.EnumerateFiles(fresh))
            Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(output, Path.GetFileName(file))));
    }

    [Fact]
    public void Gradients_only_and_half_precision_storage()
    {
        string output = _world.Temp.Sub("f16");
        GradientCacheBuilder.Build(Options(output) with { Curvature = CurvatureMode.None, DType = "BF16" });
        using var cache = GradientCache.Open(output);
        Assert.False(cache.HasCurvature);
        Assert.Equal("BF16", cache.StorageDType);
    }

    [Fact]
    public void Batches_respect_the_sample_and_token_limits()
    {
        var samples = RandomLlama.Samples(20, 64, 1, 1, 30, 1, 30);
        foreach (var (size, tokens) in new[] { (4, 1000), (16, 80), (1, 10) })
        {
            var batches = GradientCacheBuilder.Batches(samples, size, tokens).ToList();
            Assert.Equal(Enumerable.Range(0, 20), batches.SelectMany(b => b));
            Assert.All(batches, b => Assert.True(b.Count <= size && (b.Count == 1 || b.Count * b.Max(i => samples[i].InputLength) <= tokens)));
        }
    }

    /// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<CacheBuildProgress> action) : IProgress<CacheBuildProgress>
    {
        public void Report(CacheBuildProgress value) => action(value);
    }
}
