using System.Text.Json;

namespace EraserWorker.Cli.Output;

public static class CliJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web) { WriteIndented = false };
}

/// <summary>
/// Runs a command's body. Failures are not caught here: they propagate to <see cref="EraserCommandLine.RunAsync"/>,
/// which turns every one of them into exit code 1 and one line <c>eraser: …</c> (<see cref="CliFailures"/>).
/// </summary>
public static class CliErrors
{
    public static int Run(Func<int> action) => action();

    public static Task<int> RunAsync(Func<Task<int>> action) => action();
}
