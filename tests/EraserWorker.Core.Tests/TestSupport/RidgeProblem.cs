using EraserWorker.Core.Formats.GradientCaches;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Core.Tests.TestSupport;

/// <summary>
/// Ridge regression L(θ) = Σᵢ ½(xᵢᵀθ − yᵢ)² + (l2/2)‖θ‖², built so that everything the files hold is exact in
/// F32, F16 and BF16: inputs are multiples of 1/4 in [−2, 2], residuals at θ₀ are ±1 (so gᵢgᵢᵀ = xᵢxᵢᵀ and the
/// cache is exact even without curvature rows), and θ₀ = −Σᵢ rᵢxᵢ / l2 is the exact minimiser. The update must
/// then equal retraining, which the oracle computes by its own Cholesky in double precision.
/// </summary>
public sealed class RidgeProblem
{
    public const string NameA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    public const string NameB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    public const string FrozenName = "base_model.model.score.weight";

    private readonly Random _random;

    public RidgeProblem(int samples, int rank, int inFeatures, int outFeatures, int seed = 1, double l2 = 1.0)
    {
        _random = new Random(seed);
        L2 = l2;
        Parameters = [new ParameterSpec(NameA, [rank, inFeatures]), new ParameterSpec(NameB, [outFeatures, rank])];
        P = rank * inFeatures + outFeatures * rank;
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
    public IReadOnlyList<ParameterSpec> Parameters { get; }
    public int P { get; }
    public string[] Ids { get; }
    public double[][] X { get; }
    public double[] Y { get; }
    public double[] R { get; }
    public double[] Theta0 { get; }
    public double[] FrozenValues { get; } = Enumerable.Range(0, 12).Select(i => i * 0.37 - 1).ToArray();

    /// <summary>A corrected sample: new input, and a target that leaves residual ±1 at θ₀.</summary>
    public (double[] X, double Y, double R) Correction()
    {
        var x = DyadicVector();
        double r = _random.Next(2) == 0 ? -1.0 : 1.0;
        return (x, Dot(x, Theta0) - r, r);
    }

    public double[] Gradient(int i) => X[i].Select(v => R[i] * v).ToArray();

    /// <summary>Exact retraining on the edited data.</summary>
    public double[] Retrain(ISet<string> removed, IReadOnlyDictionary<string, (double[] X, double Y, double R)> replaced)
    {
        var samples = new List<(double[] X, double Y)>();
        for (int i = 0; i < Ids.Length; i++)
        {
            if (removed.Contains(Ids[i]))
                continue;
            samples.Add(replaced.TryGetValue(Ids[i], out var c) ? (c.X, c.Y) : (X[i], Y[i]));
        }
        return DenseLinearAlgebra.RidgeSolve(samples, P, L2);
    }

    /// <summary>Writes the adapter with the cache's tensors in a different order than the cache lists them.</summary>
    public void WriteAdapter(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"),
            "{\n  \"peft_type\": \"LORA\",\n  \"r\": " + Parameters[0].Shape[0] + ",\n  \"lora_alpha\": 8,\n  \"target_modules\": [\"q_proj\"]\n}\n");
        int countA = (int)Parameters[0].Count;
        IndependentSafetensors.Write(Path.Combine(directory, "adapter_model.safetensors"),
        [
            IndependentSafetensors.F32(NameB, Parameters[1].Shape.ToArray(), Theta0.Skip(countA)),
            IndependentSafetensors.F32(FrozenName, [3, 4], FrozenValues),
            IndependentSafetensors.F32(NameA, Parameters[0].Shape.ToArray(), Theta0.Take(countA)),
        ], new Dictionary<string, string> { ["format"] = "pt" });
    }

    public void WriteCache(string directory, string dtype = "F32", bool withCurvature = true, int rowsPerShard = 16)
    {
        using var writer = GradientCacheWriter.Create(directory, Parameters, L2, dtype, withCurvature, rowsPerShard);
        for (int i = 0; i < Ids.Length; i++)
            if (withCurvature)
                writer.Append(Ids[i], Gradient(i), X[i]);
            else
                writer.Append(Ids[i], Gradient(i));
        writer.Complete();
    }

    public static void WriteReplacements(string directory, IReadOnlyList<ParameterSpec> parameters, double l2,
        IReadOnlyDictionary<string, (double[] X, double Y, double R)> corrections, string dtype = "F32", bool withCurvature = true)
    {
        using var writer = GradientCacheWriter.Create(directory, parameters, l2, dtype, withCurvature, rowsPerShard: 3);
        foreach (var (id, c) in corrections)
        {
            var g = c.X.Select(v => c.R * v).ToArray();
            if (withCurvature)
                writer.Append(id, g, c.X);
            else
                writer.Append(id, g);
        }
        writer.Complete();
    }

    private double[] DyadicVector() => Enumerable.Range(0, P).Select(_ => _random.Next(-8, 9) / 4.0).ToArray();
}
