using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Output;

/// <summary>
/// Progress on standard error: at most one line a second in all (readable in logs and terminals alike), always the
/// latest state, so a line says what has really been done — rows loaded, columns of the Gram, iterations with their
/// residual. Work that finishes within a second prints nothing.
/// </summary>
public sealed class ProgressPrinter(TextWriter writer, TimeProvider? clock = null) : IProgress<EngineProgress>
{
    private readonly TimeProvider _clock = clock ?? TimeProvider.System;
    private readonly Lock _gate = new();
    private long _started = -1;
    private long _lastPrint = -1;

    public void Report(EngineProgress value)
    {
        lock (_gate)
        {
            long now = _clock.GetTimestamp();
            if (_started < 0)
                _started = now;
            var sinceLast = _clock.GetElapsedTime(_lastPrint < 0 ? _started : _lastPrint, now);
            if (sinceLast < TimeSpan.FromSeconds(1))
                return;
            _lastPrint = now;
            writer.WriteLine($"[{_clock.GetElapsedTime(_started, now).TotalSeconds,7:F1}s] {Describe(value)}");
        }
    }

    internal static string Describe(EngineProgress value)
    {
        double percent = value.Total > 0 ? 100.0 * value.Done / value.Total : 100;
        string counted = $"{value.Done,10:N0} / {value.Total:N0} ({percent:F0}%)";
        string residual = value.Residual is double r ? $", relative residual {r:E2}" : "";
        return value.Stage switch
        {
            "load" => $"{"loading cache rows",-24} {counted}",
            "gram" => $"{"building Gram matrix",-24} {counted} columns",
            "cg" => $"{"conjugate gradient",-24} iteration {value.Done:N0} (cap {value.Total:N0}){residual}",
            "llmeraser" => $"{"llmeraser (Adam)",-24} step {value.Done:N0} / {value.Total:N0}{residual}",
            _ => $"{value.Stage,-24} {counted}{residual}",
        };
    }
}
