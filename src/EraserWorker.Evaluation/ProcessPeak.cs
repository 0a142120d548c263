namespace EraserWorker.Evaluation;

/// <summary>
/// Peak resident memory of this process over an interval: a background thread samples the resident page count from
/// <c>/proc/self/statm</c> every 5 ms (VmHWM cannot be reset per interval without privileges), into a reused buffer so
/// that sampling itself does not allocate (and does not add garbage collections to the measured work). Elsewhere:
/// the working set.
/// </summary>
public sealed class ProcessPeak : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _peak;

    public ProcessPeak()
    {
        _peak = Current();
        _thread = new Thread(() =>
        {
            using var statm = File.Exists("/proc/self/statm") ? new FileStream("/proc/self/statm", FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1) : null;
            var buffer = new byte[128];
            while (!_stop)
            {
                long now = statm is null ? Environment.WorkingSet : Resident(statm, buffer);
                if (now > Interlocked.Read(ref _peak))
                    Interlocked.Exchange(ref _peak, now);
                Thread.Sleep(5);
            }
        }) { IsBackground = true, Name = "rss-sampler" };
        _thread.Start();
    }

    /// <summary>Stops sampling and returns the peak in bytes.</summary>
    public long Stop()
    {
        _stop = true;
        _thread.Join();
        return Math.Max(Interlocked.Read(ref _peak), Current());
    }

    public void Dispose()
    {
        if (!_stop)
            Stop();
    }

    private static long Resident(FileStream statm, byte[] buffer)
    {
        statm.Seek(0, SeekOrigin.Begin);
        int read = statm.Read(buffer, 0, buffer.Length);
        // "size resident shared ...": the second field, in pages.
        int i = 0;
        while (i < read && buffer[i] != ' ')
            i++;
        long pages = 0;
        for (i++; i < read && buffer[i] >= '0' && buffer[i] <= '9'; i++)
            pages = pages * 10 + (buffer[i] - '0');
        return pages * Environment.SystemPageSize;
    }

    /// <summary>Resident memory now, in bytes.</summary>
    public static long Current()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
            foreach (var line in File.ReadLines(status))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return Environment.WorkingSet;
    }
}
