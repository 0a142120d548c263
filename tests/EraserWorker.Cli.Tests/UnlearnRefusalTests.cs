using System.Buffers.Binary;
using System.Text.Json;
using EraserWorker.Core.Tests.TestSupport;
using EraserWorker.TestSupport;

namespace EraserWorker.Cli.Tests;

/// <summary>
/// <c>eraser unlearn</c> refuses what it cannot do honestly — a solve that did not converge, bad option values, non-finite
/// cache values anywhere, a replacement set of another layout, an unwritable output — with exit code 1, exactly one line
/// <c>eraser: …</c> on standard error, nothing on standard output and no output folder.
/// </summary>
[Collection("Console")]
public sealed class UnlearnRefusalTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>Ridge regression with a tiny l2: condition number in the thousands, so a few cg iterations are far from
    /// the solution (measured: relative residual ≫ 1e-6 after 3 iterations).</summary>
    private RidgeProblem IllConditioned()
    {
        var problem = new RidgeProblem(samples: 60, rank: 4, inFeatures: 12, outFeatures: 8, seed: 3, l2: 1.0 / 1024);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        return problem;
    }

    private string[] Unlearn(RidgeProblem problem, params string[] extra) =>
        ["unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"), "--remove", problem.Ids[1], "--out", _temp.Sub("out"), .. extra];

    /// <summary>Runs the CLI and asserts the refusal contract; returns the failure line.</summary>
    private string Refused(string[] args, string? output = null)
    {
        var (exit, stdout, stderr) = ConsoleCli.Run(args);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var failures = lines.Where(l => l.StartsWith("eraser: ", StringComparison.Ordinal)).ToArray();
        Assert.True(failures.Length == 1 && lines.Last() == failures[0], $"expected one final 'eraser: ' line, got:\n{stderr}");
        Assert.False(Directory.Exists(output ?? _temp.Sub("out")), "the output folder must not exist after a refusal");
        Assert.Empty(Directory.EnumerateFileSystemEntries(_temp.Path, ".out.tmp-*"));
        return failures[0];
    }

    [Fact]
    public void A_cg_solve_that_stops_above_its_tolerance_is_refused_with_its_true_residual()
    {
        var problem = IllConditioned();

        string line = Refused(Unlearn(problem, "--solver", "cg", "--max-iterations", "3", "--json"));

        Assert.StartsWith("eraser: NumericalFailure: The cg solver stopped at relative residual ", line);
        Assert.Contains("after 3 iteration(s), above the tolerance 1E-06", line);
        Assert.Contains("--max-iterations", line);
        // The same problem with enough iterations is accepted, and its residual meets the tolerance.
        var (exit, stdout, stderr) = ConsoleCli.Run(Unlearn(problem, "--solver", "cg", "--json"));
        Assert.True(exit == 0, stderr);
        Assert.True(JsonDocument.Parse(stdout).RootElement.GetProperty("relativeResidual").GetDouble() <= 1e-6);
    }

    [Fact]
    public void A_solve_that_only_gets_close_is_refused_when_the_tolerance_asks_for_more()
    {
        var problem = IllConditioned();
        string line = Refused(Unlearn(problem, "--solver", "llmeraser", "--llmeraser-iterations", "20"));
        Assert.StartsWith("eraser: NumericalFailure: The llmeraser solver stopped at relative residual ", line);
    }

    [Theory]
    [InlineData("--max-iterations", "0", "--max-iterations must be at least 1 (got 0).")]
    [InlineData("--tolerance", "0", "--tolerance must be in (0, 1) (got 0).")]
    [InlineData("--tolerance", "1", "--tolerance must be in (0, 1) (got 1).")]
    [InlineData("--tolerance", "NaN", "--tolerance must be in (0, 1) (got NaN).")]
    [InlineData("--damping", "-1", "--damping must be a finite number ≥ 0 (got -1).")]
    [InlineData("--damping", "Infinity", "--damping must be a finite number ≥ 0 (got Infinity).")]
    [InlineData("--memory-budget-mb", "0", "--memory-budget-mb must be at least 1 (got 0).")]
    [InlineData("--device", "gpu", "--device must be auto, cpu, cuda or cuda:N (got 'gpu').")]
    public void Out_of_range_options_are_refused_before_any_file_is_read(string option, string value, string message)
    {
        // The adapter and cache do not exist: the option must be refused first, by its own name.
        string line = Refused(["unlearn", "--adapter", _temp.Sub("missing-adapter"), "--cache", _temp.Sub("missing-cache"),
            "--remove", "s001", "--out", _temp.Sub("out"), option, value]);
        Assert.Equal($"eraser: InvalidRequest: {message}", line);
    }

    [Fact]
    public void The_paper_solvers_knobs_are_checked_only_for_that_solver_and_by_their_names()
    {
        string line = Refused(["unlearn", "--adapter", _temp.Sub("a"), "--cache", _temp.Sub("c"), "--remove", "s001", "--out", _temp.Sub("out"),
            "--solver", "llmeraser", "--llmeraser-lr", "0", "--llmeraser-batch", "0"]);
        Assert.Equal("eraser: InvalidRequest: --llmeraser-lr must be a finite number > 0 (got 0). --llmeraser-batch must be at least 1 (got 0).", line);
    }

    [Fact]
    public void A_non_finite_gradient_of_a_sample_that_is_not_edited_is_refused_naming_it()
    {
        var problem = IllConditioned();
        SetGradientValue(_temp.Sub("cache"), problem.Ids[37], column: 5, float.NaN);

        string line = Refused(Unlearn(problem, "--solver", "direct"));

        Assert.StartsWith("eraser: InvalidCache: ", line);
        Assert.Contains(problem.Ids[37], line);
        Assert.Contains("NaN", line);
    }

    [Fact]
    public void A_replacement_set_of_another_parameter_layout_is_an_invalid_cache_not_unknown_samples()
    {
        var problem = IllConditioned();
        var other = new RidgeProblem(samples: 4, rank: 2, inFeatures: 3, outFeatures: 2, seed: 9);
        RidgeProblem.WriteReplacements(_temp.Sub("set"), other.Parameters, other.L2,
            new Dictionary<string, (double[], double, double)> { ["not-a-sample"] = other.Correction() });

        string line = Refused(["unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"), "--replacements", _temp.Sub("set"),
            "--out", _temp.Sub("out")]);

        Assert.StartsWith($"eraser: InvalidCache: Replacement set '{_temp.Sub("set")}' cannot be used: it has P = {other.P} but the adapter's gradient cache has P = {problem.P}", line);
    }

    [Fact]
    public void An_update_that_is_zero_for_a_non_empty_edit_set_is_refused()
    {
        var problem = IllConditioned();
        for (int column = 0; column < problem.P; column++)
            SetGradientValue(_temp.Sub("cache"), problem.Ids[1], column, 0f);

        string line = Refused(Unlearn(problem, "--solver", "direct"));

        Assert.StartsWith("eraser: NumericalFailure: The update is zero although 1 sample(s) are edited", line);
    }

    [Fact]
    public void An_output_under_a_file_is_refused_before_the_solve_naming_the_users_path()
    {
        var problem = IllConditioned();
        File.WriteAllText(_temp.Sub("a-file"), "");
        string output = Path.Combine(_temp.Sub("a-file"), "out");

        string line = Refused(["unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"), "--remove", problem.Ids[1],
            "--out", output], output);

        Assert.Equal($"eraser: Cannot write the adapter to '{output}': '{_temp.Sub("a-file")}' is a file, not a folder.", line);
    }

    [Fact]
    public void An_output_where_folders_cannot_be_created_is_refused_without_internal_names()
    {
        var problem = IllConditioned();
        // /proc accepts no new folders, even for root (the tests may run as root, for whom permissions do not apply).
        string output = "/proc/eraser-out";

        string line = Refused(["unlearn", "--adapter", _temp.Sub("adapter"), "--cache", _temp.Sub("cache"), "--remove", problem.Ids[1],
            "--out", output], output);

        Assert.StartsWith($"eraser: Cannot write the adapter to '{output}': folders cannot be created in '/proc'", line);
        Assert.DoesNotContain("probe", line);
        Assert.DoesNotContain(".tmp-", line);
    }

    [Theory]
    [InlineData(new[] { "unlearn", "--bogus" }, "eraser: Unrecognized command or argument '--bogus'. Option '--adapter' is required. Option '--cache' is required. Option '--out' is required; see 'eraser unlearn --help'.")]
    [InlineData(new[] { "unlearn", "--json" }, "eraser: Option '--adapter' is required. Option '--cache' is required. Option '--out' is required; see 'eraser unlearn --help'.")]
    [InlineData(new[] { "unlearn", "--adapter", "a", "--cache", "c", "--out", "o", "--solver", "newton" }, "eraser: Argument 'newton' not recognized. Must be one of: 'auto' 'direct' 'cg' 'llmeraser'; see 'eraser unlearn --help'.")]
    [InlineData(new string[0], "eraser: Required command was not provided; see 'eraser --help'.")]
    [InlineData(new[] { "frobnicate" }, "eraser: Unrecognized command or argument 'frobnicate'. Required command was not provided; see 'eraser --help'.")]
    public void Parse_errors_are_one_line_on_standard_error_and_nothing_on_standard_output(string[] args, string expected)
    {
        var (exit, stdout, stderr) = ConsoleCli.Run(args);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.Equal(expected, stderr.TrimEnd('\n'));
    }

    [Fact]
    public void Help_goes_to_standard_output_when_asked_for()
    {
        var (exit, stdout, stderr) = ConsoleCli.Run("unlearn", "--help");
        Assert.Equal(0, exit);
        Assert.Equal("", stderr);
        Assert.Contains("--max-iterations", stdout);
        Assert.Contains("Usage:", stdout);
    }

    /// <summary>Overwrites one float of a sample's gradient row in an F32 cache written by <see cref="RidgeProblem.WriteCache"/>.</summary>
    private static void SetGradientValue(string cacheDir, string sampleId, int column, float value)
    {
        foreach (var idsFile in Directory.GetFiles(cacheDir, "shard-*.ids").Order(StringComparer.Ordinal))
        {
            int row = Array.IndexOf(File.ReadAllLines(idsFile), sampleId);
            if (row < 0)
                continue;
            string shard = Path.ChangeExtension(idsFile, ".safetensors");
            var bytes = File.ReadAllBytes(shard);
            var parsed = RawSafetensors.Parse(bytes);
            var (dtype, shape, begin, _) = parsed.Tensors["gradients"];
            Assert.Equal("F32", dtype);
            long at = parsed.DataStart + begin + 4 * (row * shape[1] + column);
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)at, 4), value);
            File.WriteAllBytes(shard, bytes);
            return;
        }
        Assert.Fail($"{sampleId} is not in {cacheDir}");
    }
}
