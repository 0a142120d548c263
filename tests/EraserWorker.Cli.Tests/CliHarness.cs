extern alias cli;

using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using EraserCommandLine = cli::EraserWorker.Cli.EraserCommandLine;

namespace EraserWorker.Cli.Tests;

/// <summary>The CLI tests run one at a time (they start real uploads and downloads; the machine has two cores).</summary>
[CollectionDefinition(Name)]
public sealed class CliCollection
{
    public const string Name = "eraser CLI";
}

/// <summary>The outcome of one <c>eraser</c> invocation.</summary>
public sealed record CliResult(int Exit, string Out, string Err)
{
    /// <summary>Standard error's lines (without the empty last one).</summary>
    public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();

    /// <summary>The single failure line, asserting that there is exactly one <c>eraser: …</c> line.</summary>
    public string FailureLine
    {
        get
        {
            var failures = ErrLines.Where(l => l.StartsWith("eraser: ", StringComparison.Ordinal)).ToArray();
            Assert.True(failures.Length == 1, $"expected one 'eraser: ' line on standard error, got:\n{Err}");
            return failures[0];
        }
    }

    public override string ToString() => $"exit {Exit}\n--- stdout\n{Out}\n--- stderr\n{Err}";
}

/// <summary>
/// Runs <c>eraser</c> in-process (<c>EraserCommandLine.Run(args, …)</c>, what Program.cs calls) with its standard output
/// and error captured through System.CommandLine's <see cref="InvocationConfiguration"/> (no global console
/// redirection, so tests of other collections that log to the console cannot interfere), or as a child process
/// (<c>dotnet eraser.dll</c>, see <see cref="EraserDll"/>) when environment variables are under test.
/// </summary>
public static class CliHarness
{
    public static CliResult Run(params string[] args)
    {
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        int exit = EraserCommandLine.Run(args, new InvocationConfiguration { Output = stdout, Error = stderr });
        return new CliResult(exit, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// The CLI's own build output (<c>src/EraserWorker.Cli/bin/&lt;configuration&gt;/net10.0/eraser.dll</c>, built with
    /// this test project). The copy in the test's output folder cannot run by itself: the worker reference makes the
    /// build take Microsoft.Extensions.* from the ASP.NET Core shared framework, which eraser's runtimeconfig lacks.
    /// </summary>
    public static string EraserDll()
    {
        string configuration = typeof(CliHarness).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyConfigurationAttribute), false)
            .OfType<System.Reflection.AssemblyConfigurationAttribute>().FirstOrDefault()?.Configuration ?? "Debug";
        string framework = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Name;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (!File.Exists(Path.Combine(dir.FullName, "EraserWorker.sln")))
                continue;
            string dll = Path.Combine(dir.FullName, "src", "EraserWorker.Cli", "bin", configuration, framework, "eraser.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing: build the solution (the test project references src/EraserWorker.Cli).");
            return dll;
        }
        throw new InvalidOperationException($"No EraserWorker.sln above {AppContext.BaseDirectory}.");
    }

    /// <summary>Runs <c>dotnet eraser.dll</c> in <paramref name="workingDirectory"/> with extra environment variables.</summary>
    public static async Task<CliResult> RunProcessAsync(string workingDirectory, IReadOnlyDictionary<string, string?> environment, params string[] args)
    {
        string dll = EraserDll();
        var start = new ProcessStartInfo(Environment.ProcessPath is { } host && Path.GetFileNameWithoutExtension(host) == "dotnet" ? host : "dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        start.ArgumentList.Add(dll);
        foreach (var a in args)
            start.ArgumentList.Add(a);
        // Only what the test sets: no Eraser__* of the runner's environment leaks into the child.
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("Eraser__", StringComparison.OrdinalIgnoreCase)).ToList())
            start.Environment.Remove(key);
        foreach (var (key, value) in environment)
            start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"eraser {string.Join(' ', args)} did not finish within 2 minutes.");
        }
        return new CliResult(process.ExitCode, await output, await error);
    }

    /// <summary>A settings file like the worker's appsettings.json, with the given <c>Eraser</c> section.</summary>
    public static string WriteSettings(string directory, JsonObject eraser)
    {
        string path = Path.Combine(directory, $"settings-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, new JsonObject { ["Eraser"] = eraser }.ToJsonString());
        return path;
    }
}

/// <summary>
/// Small but real inputs: a PEFT LoRA adapter (two LoRA tensors that form θ, one frozen tensor that does not) and an
/// <c>eraser.gradcache/v1</c> cache over θ, written with the project's own writers.
/// </summary>
public static class CliFixtures
{
    public const string NameA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    public const string NameB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    public const string FrozenName = "base_model.model.score.weight";

    public static IReadOnlyList<ParameterSpec> Parameters(int rank = 2, int inFeatures = 5, int outFeatures = 3) =>
    [
        new ParameterSpec(NameA, [rank, inFeatures]),
        new ParameterSpec(NameB, [outFeatures, rank]),
    ];

    /// <summary>Writes an adapter whose LoRA tensors have the given shapes (defaults: those of <see cref="Parameters"/>).</summary>
    public static void WriteAdapter(string directory, int seed, int rank = 2, int inFeatures = 5, int outFeatures = 3)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"),
            $"{{\n  \"peft_type\": \"LORA\",\n  \"r\": {rank},\n  \"lora_alpha\": 8,\n  \"target_modules\": [\"q_proj\"]\n}}\n");
        var random = new Random(seed);
        SafetensorsWriter.WriteFile(Path.Combine(directory, "adapter_model.safetensors"),
        [
            Tensor(NameA, [rank, inFeatures], random),
            Tensor(NameB, [outFeatures, rank], random),
            Tensor(FrozenName, [2, 3], random),
        ], new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Writes a cache of <paramref name="ids"/> over <paramref name="parameters"/> (with curvature rows,
    /// <paramref name="rowsPerShard"/> rows per shard).</summary>
    public static void WriteCache(string directory, IReadOnlyList<ParameterSpec> parameters, IReadOnlyList<string> ids, int seed, int rowsPerShard = 4)
    {
        var random = new Random(seed);
        int p = (int)ParameterSpec.TotalCount(parameters);
        using var writer = GradientCacheWriter.Create(directory, parameters, l2: 0.01, DTypeConversion.F32, withCurvature: true, rowsPerShard);
        foreach (var id in ids)
        {
            var g = Enumerable.Range(0, p).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
            var c = Enumerable.Range(0, p).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
            writer.Append(id, g, c);
        }
        writer.Complete();
    }

    public static string[] Ids(int count, string prefix = "s") => Enumerable.Range(0, count).Select(i => $"{prefix}{i:D3}").ToArray();

    private static (string, string, IReadOnlyList<long>, ReadOnlyMemory<byte>) Tensor(string name, long[] shape, Random random)
    {
        int n = (int)shape.Aggregate(1L, (a, b) => a * b);
        var values = Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
        var bytes = new byte[n * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return (name, DTypeConversion.F32, shape, bytes);
    }
}
