namespace EraserWorker.Cli.Output;

public static class ProcessMemory
{
    /// <summary>Peak resident memory of this process (VmHWM on Linux; the managed peak elsewhere).</summary>
    public static long PeakBytes()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
            foreach (var line in File.ReadLines(status))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return Environment.WorkingSet;
    }

    /// <summary>Starts the peak over from the current resident memory (Linux: <c>/proc/self/clear_refs</c> ← 5), so a
    /// benchmark can measure one phase; returns false where that is not available.</summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
