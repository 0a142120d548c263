using System.Text.Json;
using EraserWorker.TestSupport;
using EraserWorker.Core.Tests.TestSupport;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Cli.Tests;

/// <summary><c>eraser unlearn</c> as a user runs it: JSON figures on success, one line and exit 1 on failure, nothing written.</summary>
[Collection("Console")]
public sealed class UnlearnCommandTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static (int Exit, string Out, string Err) Run(params string[] args) => ConsoleCli.Run(args);

    [Fact]
    public void Json_output_reports_the_solve_and_the_adapter_equals_retraining()
    {
        var problem = new RidgeProblem(samples: 30, rank: 2, inFeatures: 6, outFeatures: 4, seed: 4);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        File.WriteAllLines(_temp.Sub("ids.txt"), [problem.Ids[2], problem.Ids[3]]);

        var (exit, stdout, _) = Run("unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"),
            "--remove", $"{problem.Ids[0]},{problem.Ids[1]}", "--remove-file", _temp.Sub("ids.txt"),
            "--out", _temp.Sub("out"), "--solver", "direct", "--precision", "Float64", "--json");

        Assert.Equal(0, exit);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        Assert.Equal("direct", root.GetProperty("solver").GetString());
        Assert.Equal(4, root.GetProperty("removed").GetInt32());
        Assert.True(root.GetProperty("relativeResidual").GetDouble() < 1e-9);
        var truth = problem.Retrain(problem.Ids.Take(4).ToHashSet(), new Dictionary<string, (double[], double, double)>());
        Assert.Equal(Distance(truth, problem.Theta0), root.GetProperty("updateNorm").GetDouble(), 5);
        var file = Path.Combine(_temp.Sub("out"), "adapter_model.safetensors");
        var written = IndependentSafetensors.ReadF32(file, RidgeProblem.NameA).Concat(IndependentSafetensors.ReadF32(file, RidgeProblem.NameB)).ToArray();
        Assert.True(Distance(written, truth) / Distance(truth, problem.Theta0) < 1e-5);
    }

    [Fact]
    public void Streamed_rows_are_reported_and_give_the_retrained_adapter()
    {
        var problem = new RidgeProblem(samples: 30, rank: 4, inFeatures: 12, outFeatures: 8, seed: 6);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"), "F16");

        var (exit, stdout, _) = Run("unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"),
            "--remove", $"{problem.Ids[0]},{problem.Ids[7]}", "--out", _temp.Sub("out"), "--solver", "direct",
            "--residency", "Streamed", "--json");

        Assert.Equal(0, exit);
        using var json = JsonDocument.Parse(stdout);
        var rows = json.RootElement.GetProperty("rows");
        Assert.Equal("streamed", rows.GetProperty("residency").GetString());
        Assert.Equal("F16", rows.GetProperty("dType").GetString());
        Assert.Contains("streamed as configured", rows.GetProperty("reason").GetString());
        Assert.True(rows.GetProperty("bytesRead").GetInt64() >= 2L * 30 * problem.P * 2);
        var truth = problem.Retrain(new HashSet<string> { problem.Ids[0], problem.Ids[7] }, new Dictionary<string, (double[], double, double)>());
        Assert.Equal(Distance(truth, problem.Theta0), json.RootElement.GetProperty("updateNorm").GetDouble(), 4);
    }

    [Fact]
    public void Failures_exit_non_zero_with_one_line_and_write_nothing()
    {
        var problem = new RidgeProblem(samples: 10, rank: 2, inFeatures: 3, outFeatures: 2, seed: 8);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));

        var unknown = Run("unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"),
            "--remove", "nobody", "--out", _temp.Sub("out1"));
        Assert.Equal(1, unknown.Exit);
        Assert.Equal("eraser: UnknownSample: Sample 'nobody' is not in the gradient cache.", unknown.Err.TrimEnd());
        Assert.False(Directory.Exists(_temp.Sub("out1")));

        File.WriteAllText(Path.Combine(_temp.Sub("cache"), "cache.json"), "{\"format\": \"something/else\"}");
        var broken = Run("unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"),
            "--remove", problem.Ids[0], "--out", _temp.Sub("out2"));
        Assert.Equal(1, broken.Exit);
        Assert.Single(broken.Err.TrimEnd().Split('\n'));
        Assert.Contains("format", broken.Err);
        Assert.False(Directory.Exists(_temp.Sub("out2")));
    }
}
