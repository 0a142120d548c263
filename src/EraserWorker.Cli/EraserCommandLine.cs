using System.CommandLine;
using EraserWorker.Cli.Commands;
using EraserWorker.Cli.Output;

namespace EraserWorker.Cli;

/// <summary>
/// The <c>eraser</c> command line and its one error contract: every failure — a parse error, an unknown option, a refused
/// input, a failed solve, an unexpected exception — is exit code 1 (130 when cancelled) and exactly one line on standard
/// error starting <c>eraser:</c>; help goes to standard output only when asked for (<c>--help</c>); with <c>--json</c>
/// standard output holds valid JSON or nothing.
/// </summary>
public static class EraserCommandLine
{
    public static RootCommand Build()
    {
        var root = new RootCommand("eraser — remove or correct training samples of a LoRA adapter without retraining.");
        root.Subcommands.Add(UnlearnCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        OperatorCommands.AddTo(root);
        root.Subcommands.Add(ModelCacheCommand.Create());
        root.Subcommands.Add(ModelTrainCommand.Create());
        root.Subcommands.Add(ModelEvalCommand.Create());
        ModelBenchCommand.AddTo(root);
        root.Subcommands.Add(ExperimentCommand.Create());
        return root;
    }

    /// <summary>Parses and runs one invocation. <paramref name="configuration"/> redirects the commands' output (tests);
    /// its default exception handler is always off, failures are reported here.</summary>
    public static async Task<int> RunAsync(string[] args, InvocationConfiguration? configuration = null, CancellationToken cancellation = default)
    {
        var output = configuration?.Output ?? Console.Out;
        var error = configuration?.Error ?? Console.Error;
        var parse = Build().Parse(args);
        if (parse.Errors.Count > 0)
        {
            // Every parse error, in one line: "Option '--adapter' is required. Option '--cache' is required; see …".
            // Unknown tokens first: a mistyped option is usually why a required one looks missing.
            string errors = string.Join(" ", parse.Errors.Select(e => CliFailures.OneLine(e.Message)).Distinct()
                .OrderBy(m => m.StartsWith("Unrecognized", StringComparison.Ordinal) ? 0 : 1));
            error.WriteLine($"eraser: {errors.TrimEnd('.')}; see '{CommandPath(parse.CommandResult.Command)} --help'.");
            return 1;
        }
        try
        {
            return await parse.InvokeAsync(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false },
                cancellation);
        }
        catch (Exception e)
        {
            return CliFailures.Report(e, error);
        }
    }

    public static int Run(string[] args, InvocationConfiguration? configuration = null) => RunAsync(args, configuration).GetAwaiter().GetResult();

    private static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? symbol = command; symbol is Command c; symbol = c.Parents.FirstOrDefault())
            names.Add(c is RootCommand ? "eraser" : c.Name);
        names.Reverse();
        return string.Join(' ', names);
    }
}
