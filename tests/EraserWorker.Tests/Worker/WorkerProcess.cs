using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// The worker as a real process: <c>dotnet EraserWorker.dll</c> from this test project's output folder (the
/// project references src/EraserWorker, so the build copies the worker's assembly, deps.json, runtimeconfig.json
/// and appsettings.json there), configured only by environment variables. Standard output and error are captured
/// (<see cref="Output"/>) for failure messages; disposing kills the process tree and writes its log to the test
/// output.
/// </summary>
public sealed class WorkerProcess : IAsyncDisposable
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(5) };

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly ITestOutputHelper? _log;
    private bool _disposed;

    private WorkerProcess(string name, Process process, int httpPort, ITestOutputHelper? log)
    {
        Name = name;
        _process = process;
        HttpPort = httpPort;
        _log = log;
    }

    /// <summary>A label for messages (e.g. "worker-1").</summary>
    public string Name { get; }

    /// <summary>The port of <c>/metrics</c> and <c>/health/*</c>.</summary>
    public int HttpPort { get; }

    /// <summary>Process id.</summary>
    public int Id => _process.Id;

    /// <summary>True when the process has exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>Everything the process wrote so far (standard output and error, interleaved, with elapsed times).</summary>
    public string Output
    {
        get
        {
            lock (_output)
                return _output.ToString();
        }
    }

    /// <summary>The last lines of <see cref="Output"/>, for assertion messages.</summary>
    public string Tail(int lines = 60)
    {
        var all = Output.Split('\n');
        return $"--- {Name} (pid {_process.Id}{(HasExited ? $", exited with {_process.ExitCode}" : "")}), last {Math.Min(lines, all.Length)} lines ---\n" +
               string.Join('\n', all.TakeLast(lines));
    }

    /// <summary>Path of the worker's entry assembly in the test output folder.</summary>
    public static string WorkerAssembly
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "EraserWorker.dll");
            Assert.True(File.Exists(path) && File.Exists(Path.ChangeExtension(path, ".runtimeconfig.json")),
                $"{path} (and its runtimeconfig.json) should be in the test output folder: the test project references src/EraserWorker.");
            return path;
        }
    }

    /// <summary>A TCP port that was free a moment ago (the OS picks it).</summary>
    public static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>Starts <c>dotnet EraserWorker.dll</c> with <paramref name="environment"/> added to this process's
    /// environment (any inherited <c>Eraser__*</c> variable is removed first) and <c>Eraser__Http__Port</c> set to a
    /// free port.</summary>
    public static WorkerProcess Start(string name, IReadOnlyDictionary<string, string> environment, ITestOutputHelper? log = null,
        IReadOnlyList<string>? arguments = null)
    {
        string assembly = WorkerAssembly;
        int port = FreePort();
        var start = new ProcessStartInfo(DotnetHost())
        {
            WorkingDirectory = Path.GetDirectoryName(assembly)!,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        start.ArgumentList.Add(assembly);
        foreach (var argument in arguments ?? [])
            start.ArgumentList.Add(argument);
        foreach (var key in start.Environment.Keys.Where(k => k.StartsWith("Eraser__", StringComparison.OrdinalIgnoreCase)).ToList())
            start.Environment.Remove(key);
        start.Environment["DOTNET_ENVIRONMENT"] = "Production";
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        start.Environment.Remove("ASPNETCORE_URLS");
        start.Environment["Eraser__Http__Port"] = port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        foreach (var (key, value) in environment)
            start.Environment[key] = value;

        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        var worker = new WorkerProcess(name, process, port, log);
        process.OutputDataReceived += (_, e) => worker.Append("out", e.Data);
        process.ErrorDataReceived += (_, e) => worker.Append("err", e.Data);
        if (!process.Start())
            throw new InvalidOperationException($"Could not start {start.FileName} {assembly}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return worker;
    }

    private void Append(string stream, string? line)
    {
        if (line is null)
            return;
        lock (_output)
            _output.Append($"[{_clock.Elapsed.TotalSeconds,7:F2}s {stream}] ").Append(line).Append('\n');
    }

    /// <summary>The status of <c>GET /health/ready</c>, or null when nothing answers.</summary>
    public async Task<HttpStatusCode?> ReadyStatusAsync()
    {
        try
        {
            using var response = await Http.GetAsync($"http://127.0.0.1:{HttpPort}/health/ready");
            return response.StatusCode;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return null;
        }
    }

    /// <summary>True when the process exited at start-up because its HTTP port was taken meanwhile (the port is
    /// chosen free, then released, so another process may take it first).</summary>
    public bool LostPortRace => HasExited && Output.Contains("address already in use", StringComparison.OrdinalIgnoreCase);

    /// <summary>Waits until <c>/health/ready</c> answers 200 (the store is reachable and MassTransit's receive
    /// endpoint is bound to the broker). Fails with the process's output on timeout or exit.</summary>
    public async Task WaitReadyAsync(TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        var watch = Stopwatch.StartNew();
        HttpStatusCode? last = null;
        while (watch.Elapsed < limit)
        {
            if (HasExited)
            {
                await _process.WaitForExitAsync(); // all output read
                Assert.Fail($"{Name} exited with code {_process.ExitCode} before it was ready.\n{Tail()}");
            }
            last = await ReadyStatusAsync();
            if (last == HttpStatusCode.OK)
            {
                _log?.WriteLine($"{Name}: ready after {watch.Elapsed.TotalSeconds:F1} s (http port {HttpPort}, pid {Id})");
                return;
            }
            await Task.Delay(100);
        }
        Assert.Fail($"{Name}: /health/ready did not answer 200 within {limit.TotalSeconds:F0} s (last: {(last is null ? "no answer" : ((int)last).ToString(System.Globalization.CultureInfo.InvariantCulture))}).\n{Tail()}");
    }

    /// <summary>Asks the process to stop as a container runtime or systemd does (SIGTERM) and returns its exit code;
    /// fails if it has not exited within <paramref name="timeout"/> (default 30 s).</summary>
    public async Task<int> StopAsync(TimeSpan? timeout = null)
    {
        if (!HasExited)
            _ = SendSignal(_process.Id, 15);
        return await WaitForExitAsync(timeout);
    }

    /// <summary>Waits for the process to exit by itself and returns its exit code; fails after <paramref name="timeout"/>.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(30);
        using var wait = new CancellationTokenSource(limit);
        try
        {
            await _process.WaitForExitAsync(wait.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"{Name} did not exit within {limit.TotalSeconds:F0} s.\n{Tail()}");
        }
        return _process.ExitCode;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SendSignal(int pid, int signal);

    /// <summary>Kills the process (tree) now.</summary>
    public async Task KillAsync()
    {
        if (!HasExited)
        {
            try
            {
                _process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // exited meanwhile
            }
        }
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        try
        {
            await _process.WaitForExitAsync(wait.Token);
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_disposed)
            return;
        _disposed = true;
        await KillAsync();
        if (_log is not null)
        {
            try
            {
                _log.WriteLine(Tail(400));
            }
            catch (InvalidOperationException)
            {
                // the test has finished (output helper no longer active)
            }
        }
        _process.Dispose();
    }

    private static string DotnetHost()
    {
        // Set by the dotnet CLI (dotnet test) to the muxer that runs us; else the one on PATH.
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        return !string.IsNullOrEmpty(host) && File.Exists(host) ? host : "dotnet";
    }
}
