using System.Diagnostics;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Output;

/// <summary>Progress on standard error, at most one line a second per stage (readable in logs and terminals alike).</summary>
public sealed class ProgressPrinter(TextWriter writer) : IProgress<EngineProgress>
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Lock _gate = new();
    private string? _stage;
    private double _lastPrint = double.NegativeInfinity;
    private bool _finishPrinted;

    public void Report(EngineProgress value)
    {
        lock (_gate)
        {
            double now = _clock.Elapsed.TotalSeconds;
            bool finished = value.Done >= value.Total;
            bool sameStage = value.Stage == _stage;
            if (sameStage && now - _lastPrint < 1 && !(finished && !_finishPrinted))
                return;
            if (!sameStage)
                _finishPrinted = false;
            _finishPrinted |= finished;
            _stage = value.Stage;
            _lastPrint = now;
            double percent = value.Total > 0 ? 100.0 * value.Done / value.Total : 100;
            writer.WriteLine($"[{now,7:F1}s] {Describe(value.Stage),-24} {value.Done,10:N0} / {value.Total:N0} ({percent:F0}%)");
        }
    }

    private static string Describe(string stage) => stage switch
    {
        "load" => "loading cache rows",
        "gram" => "building Gram matrix",
        "cg" => "conjugate gradient",
        "llmeraser" => "llmeraser (Adam)",
        _ => stage,
    };
}
