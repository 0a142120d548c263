using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Infrastructure;

/// <summary>Writes log lines of an in-process host to the test's output (shown for failed tests). Lines logged after
/// the test has finished are dropped.</summary>
public sealed class TestOutputLoggerProvider(ITestOutputHelper output, LogLevel minimum = LogLevel.Information) : ILoggerProvider
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly LogLevel _minimum = minimum;

    /// <inheritdoc />
    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    /// <inheritdoc />
    public void Dispose()
    {
    }

    private void Write(string line)
    {
        try
        {
            output.WriteLine($"[{_clock.Elapsed.TotalSeconds,6:F2}s] {line}");
        }
        catch (InvalidOperationException)
        {
            // the test has finished
        }
    }

    private sealed class Logger(TestOutputLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) =>
            logLevel >= provider._minimum && !(category.StartsWith("Microsoft.", StringComparison.Ordinal) && logLevel < LogLevel.Warning);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
                return;
            string name = category[(category.LastIndexOf('.') + 1)..];
            provider.Write($"{logLevel.ToString()[..4].ToLowerInvariant()} {name}: {formatter(state, exception)}{(exception is null ? "" : " " + exception)}");
        }
    }
}
