using System.Diagnostics;
using System.Text.Json;

namespace EraserWorker.Models.Tests.TestSupport;

/// <summary>Runs python/llama_reference.py (Debian's python3-torch) and returns its JSON.</summary>
public static class PythonReference
{
    public const string Python = "/usr/bin/python3";

    public static JsonDocument Run(string modelDirectory, string adapterDirectory, string samplesFile, string dtype = "float64")
    {
        string script = Path.Combine(AppContext.BaseDirectory, "python", "llama_reference.py");
        Assert.True(File.Exists(script), $"missing {script}");
        Assert.True(File.Exists(Python), "this cross-check needs /usr/bin/python3 with python3-torch (apt-get install -y python3-torch python3-numpy)");
        var info = new ProcessStartInfo(Python)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { script, modelDirectory, adapterDirectory, samplesFile, dtype })
            info.ArgumentList.Add(a);
        info.Environment["OMP_NUM_THREADS"] = "1";
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(120_000), "the PyTorch reference timed out");
        string error = stderr.Result;
        Assert.True(process.ExitCode == 0,
            $"the PyTorch reference failed (exit {process.ExitCode}); it needs python3-torch and python3-numpy (apt-get install -y python3-torch python3-numpy): {error}");
        return JsonDocument.Parse(stdout.Result);
    }
}
