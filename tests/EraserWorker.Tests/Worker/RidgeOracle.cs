using EraserWorker.Core.Tests.TestSupport;
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// The exactness oracle of the worker tests (after tests/EraserWorker.Core.Tests/TestSupport/RidgeProblem.cs, which
/// this project does not reference): ridge regression L(θ) = Σᵢ ½(xᵢᵀθ − yᵢ)² + (l2/2)‖θ‖² built so that every
/// file holds exact values — inputs are multiples of 1/4 in [−2, 2], residuals at θ₀ are ±1 (so gᵢ = rᵢxᵢ and
/// gᵢgᵢᵀ = xᵢxᵢᵀ), l2 is a power of two and θ₀ = −Σᵢ rᵢxᵢ / l2 is the exact minimiser, exactly representable in
/// F32. The worker's update must then equal retraining from scratch, which <see cref="Retrain"/> computes with its
/// own double-precision Cholesky, independent of TorchSharp and of the worker.
/// </summary>
public sealed class RidgeOracle
{
    public const string NameA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    public const string NameB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    public const string FrozenName = "base_model.model.score.weight";

    private readonly Random _random;

    public RidgeOracle(int samples = 40, int rank = 2, int inFeatures = 6, int outFeatures = 4, int seed = 1, double l2 = 8.0)
    {
        _random = new Random(seed);
        L2 = l2;
        Rank = rank;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Parameters = [new ParameterSpec(NameA, [rank, inFeatures]), new ParameterSpec(NameB, [outFeatures, rank])];
        P = rank * inFeatures + outFeatures * rank;
        // Some ids are not ASCII: they travel through JSON, blob names never contain them.
        Ids = Enumerable.Range(0, samples).Select(i => i % 7 == 3 ? $"sample-ü-{i:D3}" : $"s{i:D3}").ToArray();
        X = Ids.Select(_ => DyadicVector()).ToArray();
        R = Ids.Select(_ => _random.Next(2) == 0 ? -1.0 : 1.0).ToArray();
        Theta0 = new double[P];
        for (int i = 0; i < samples; i++)
            for (int j = 0; j < P; j++)
                Theta0[j] -= R[i] * X[i][j] / l2;
        Y = Ids.Select((_, i) => Dot(X[i], Theta0) - R[i]).ToArray();
    }

    public double L2 { get; }
    public int Rank { get; }
    public int InFeatures { get; }
    public int OutFeatures { get; }
    public IReadOnlyList<ParameterSpec> Parameters { get; }
    public int P { get; }
    public string[] Ids { get; }
    public double[][] X { get; }
    public double[] Y { get; }
    public double[] R { get; }
    public double[] Theta0 { get; }
    public double[] FrozenValues { get; } = Enumerable.Range(0, 12).Select(i => i * 0.37 - 1).ToArray();

    /// <summary>A corrected sample: a new input, and a target that leaves residual ±1 at θ₀.</summary>
    public Correction NewCorrection()
    {
        var x = DyadicVector();
        double r = _random.Next(2) == 0 ? -1.0 : 1.0;
        return new Correction(x, Dot(x, Theta0) - r, r);
    }

    /// <summary>Exact retraining on the edited data (double precision, own Cholesky).</summary>
    public double[] Retrain(IEnumerable<string> removed, IReadOnlyDictionary<string, Correction>? replaced = null)
    {
        var removedSet = removed.ToHashSet(StringComparer.Ordinal);
        replaced ??= new Dictionary<string, Correction>();
        var samples = new List<(double[] X, double Y)>();
        for (int i = 0; i < Ids.Length; i++)
        {
            if (removedSet.Contains(Ids[i]))
                continue;
            samples.Add(replaced.TryGetValue(Ids[i], out var c) ? (c.X, c.Y) : (X[i], Y[i]));
        }
        return DenseLinearAlgebra.RidgeSolve(samples, P, L2);
    }

    /// <summary>Writes the PEFT adapter (tensors in another order than the cache lists them, plus a frozen tensor)
    /// to <c>dir/adapter</c> and the F32 gradient cache with curvature rows to <c>dir/cache</c>.</summary>
    public (string AdapterDir, string CacheDir) WriteFiles(string dir)
    {
        string adapter = Path.Combine(dir, "adapter"), cache = Path.Combine(dir, "cache");
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"),
            "{\n  \"peft_type\": \"LORA\",\n  \"r\": " + Rank + ",\n  \"lora_alpha\": 8,\n  \"target_modules\": [\"q_proj\"]\n}\n");
        int countA = Rank * InFeatures;
        WriteSafetensors(Path.Combine(adapter, "adapter_model.safetensors"),
        [
            (NameB, [OutFeatures, Rank], Theta0.Skip(countA).ToArray()),
            (FrozenName, [3, 4], FrozenValues),
            (NameA, [Rank, InFeatures], Theta0.Take(countA).ToArray()),
        ]);
        using (var writer = GradientCacheWriter.Create(cache, Parameters, L2, "F32", true, rowsPerShard: 16))
        {
            for (int i = 0; i < Ids.Length; i++)
                writer.Append(Ids[i], X[i].Select(v => R[i] * v).ToArray(), X[i]);
            writer.Complete();
        }
        return (adapter, cache);
    }

    /// <summary>Writes a replacement set (gradient and curvature rows of the corrected samples, at θ₀).</summary>
    public void WriteReplacements(string dir, IReadOnlyDictionary<string, Correction> corrections)
    {
        using var writer = GradientCacheWriter.Create(dir, Parameters, L2, "F32", true, rowsPerShard: 3);
        foreach (var (id, c) in corrections)
            writer.Append(id, c.X.Select(v => c.R * v).ToArray(), c.X);
        writer.Complete();
    }

    /// <summary>θ of an adapter file, in the cache's order (A, then B), read by this class's own parser.</summary>
    public double[] ReadTheta(string adapterModelFile) =>
        [.. ReadF32(adapterModelFile, NameA), .. ReadF32(adapterModelFile, NameB)];

    /// <summary>
    /// Asserts that <paramref name="actual"/> equals the retraining result <paramref name="expected"/>:
    /// ‖actual − expected‖ ≤ 1e-4 · ‖expected − θ₀‖ (the worker computes in float32 with float64 refinement and
    /// stores F32), that the update is not trivially zero, and that the frozen tensor is unchanged bit for bit.
    /// Returns the relative error.
    /// </summary>
    public double AssertEqualsRetraining(string adapterModelFile, double[] expected, string what)
    {
        var actual = ReadTheta(adapterModelFile);
        double shift = Norm(Subtract(expected, Theta0));
        double error = Norm(Subtract(actual, expected));
        Assert.True(shift > 1e-3, $"{what}: the edits barely move θ (‖Δθ‖ = {shift:E2}); the test would prove nothing.");
        Assert.True(error <= 1e-4 * shift,
            $"{what}: the adapter differs from exact retraining: ‖θ − θ_retrain‖ = {error:E3}, ‖θ_retrain − θ₀‖ = {shift:E3}, " +
            $"relative {error / shift:E3} > 1e-4 (distance to θ₀: {Norm(Subtract(actual, Theta0)):E3}).");
        Assert.Equal(FrozenValues.Select(v => (float)v), ReadF32(adapterModelFile, FrozenName).Select(v => (float)v));
        return error / shift;
    }

    public sealed record Correction(double[] X, double Y, double R);

    private double[] DyadicVector() => Enumerable.Range(0, P).Select(_ => _random.Next(-8, 9) / 4.0).ToArray();

    // ------------------------------------------------------------------------- independent arithmetic and files
    // Shared with the core tests (linked from tests/EraserWorker.Core.Tests/TestSupport): plain double-precision
    // Cholesky and a minimal safetensors reader/writer, both separate from the code under test.

    public static double[] SolveSpd(double[,] a, double[] b) => DenseLinearAlgebra.SolveSpd(a, b);

    public static double Dot(double[] a, double[] b) => DenseLinearAlgebra.Dot(a, b);

    public static double Norm(double[] a) => DenseLinearAlgebra.Norm(a);

    public static double[] Subtract(double[] a, double[] b) => DenseLinearAlgebra.Subtract(a, b);

    private static void WriteSafetensors(string path, IReadOnlyList<(string Name, long[] Shape, double[] Values)> tensors) =>
        IndependentSafetensors.Write(path, tensors.Select(t => IndependentSafetensors.F32(t.Name, t.Shape, t.Values)).ToList(),
            new Dictionary<string, string> { ["format"] = "pt" });

    public static double[] ReadF32(string path, string name) => IndependentSafetensors.ReadF32(path, name);
}
