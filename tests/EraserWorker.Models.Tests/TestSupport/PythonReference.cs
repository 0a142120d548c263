using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace EraserWorker.Models.Tests.TestSupport;

/// <summary>Runs the python/*.py references with Debian's /usr/bin/python3 (python3-torch, python3-sentencepiece):
/// a missing interpreter or package fails the test, naming the packages (scripts/services.sh deps installs them).</summary>
public static class PythonReference
{
    public const string Python = "/usr/bin/python3";

    private const string TorchPackages = "python3-torch and python3-numpy (scripts/services.sh deps, or apt-get install -y python3-torch python3-numpy)";

    public const string SentencePiecePackages = "python3-sentencepiece (scripts/services.sh deps, or apt-get install -y python3-sentencepiece)";

    /// <summary>llama_reference.py: logits, losses and LoRA gradients of the samples in PyTorch.</summary>
    public static JsonDocument Run(string modelDirectory, string adapterDirectory, string samplesFile, string dtype = "float64") =>
        JsonDocument.Parse(RunScript("llama_reference.py", TorchPackages, TimeSpan.FromSeconds(120), modelDirectory, adapterDirectory, samplesFile, dtype));

    /// <summary>Runs python/<paramref name="script"/> and returns its standard output; fails the test, naming
    /// <paramref name="packages"/>, when the interpreter or a module is missing or the script fails.</summary>
    public static string RunScript(string script, string packages, TimeSpan timeout, params string[] arguments)
    {
        string path = Path.Combine(AppContext.BaseDirectory, "python", script);
        Assert.True(File.Exists(path), $"missing {path}");
        Assert.True(File.Exists(Python), $"this cross-check needs {Python} with {packages}");
        var info = new ProcessStartInfo(Python)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        info.ArgumentList.Add(path);
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        info.Environment["OMP_NUM_THREADS"] = "1";
        info.Environment["PYTHONIOENCODING"] = "utf-8";
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{script} timed out after {timeout.TotalSeconds:0} s");
        }
        string error = stderr.Result;
        Assert.True(process.ExitCode == 0, $"{script} failed (exit {process.ExitCode}); it needs {packages}: {error}");
        return stdout.Result;
    }
}
