using System.Diagnostics;
using EraserWorker.Models;

namespace EraserWorker.Cli.Commands;

/// <summary>
/// The progress bar of <c>eraser cache build</c> on standard error: redrawn in place on a terminal, one line a second
/// when standard error is redirected (logs). Shows samples, throughput and the estimated time left.
/// </summary>
internal sealed class ModelProgressBar(TextWriter writer, bool interactive) : IProgress<CacheBuildProgress>
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Lock _gate = new();
    private double _last = double.NegativeInfinity;
    private bool _drawn;

    public static ModelProgressBar ForConsole() => new(Console.Error, !Console.IsErrorRedirected);

    public void Report(CacheBuildProgress p)
    {
        lock (_gate)
        {
            double now = _clock.Elapsed.TotalSeconds;
            bool done = p.SamplesDone >= p.SamplesTotal;
            if (!done && now - _last < (interactive ? 0.2 : 1.0))
                return;
            _last = now;
            int computed = p.SamplesDone - p.ResumedSamples;
            double rate = computed > 0 ? computed / p.Elapsed.TotalSeconds : 0;
            double left = rate > 0 ? (p.SamplesTotal - p.SamplesDone) / rate : double.NaN;
            double tokensRate = p.Elapsed.TotalSeconds > 0 ? (p.TokensDone - p.ResumedTokens) / p.Elapsed.TotalSeconds : 0;
            double fraction = p.SamplesTotal > 0 ? (double)p.SamplesDone / p.SamplesTotal : 1;
            const int width = 28;
            int filled = (int)Math.Round(fraction * width);
            string bar = new string('#', filled) + new string('.', width - filled);
            string eta = double.IsFinite(left) ? TimeSpan.FromSeconds(Math.Ceiling(left)).ToString(@"hh\:mm\:ss") : "--:--:--";
            string resumed = p.ResumedSamples > 0 ? $", {p.ResumedSamples:N0} resumed" : "";
            string line = $"[{bar}] {fraction * 100,3:F0}% {p.SamplesDone:N0}/{p.SamplesTotal:N0} samples{resumed}, {rate:F1} samples/s, {tokensRate:N0} tokens/s, ETA {eta}";
            if (interactive)
            {
                writer.Write("\r" + line.PadRight(Console.IsErrorRedirected ? 0 : Math.Max(0, SafeWidth() - 1)));
                _drawn = true;
                if (done)
                {
                    writer.WriteLine();
                    _drawn = false;
                }
            }
            else
                writer.WriteLine(line);
        }
    }

    /// <summary>Ends a partly drawn bar with a line break (before an error message).</summary>
    public void Finish()
    {
        lock (_gate)
            if (_drawn)
            {
                writer.WriteLine();
                _drawn = false;
            }
    }

    private static int SafeWidth()
    {
        try
        {
            return Console.WindowWidth;
        }
        catch (IOException)
        {
            return 100;
        }
    }
}
