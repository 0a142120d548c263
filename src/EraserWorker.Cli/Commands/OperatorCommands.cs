using System.CommandLine;

namespace EraserWorker.Cli.Commands;

/// <summary>The operator commands of SPEC §6 that talk to the worker's store and transport.</summary>
public static class OperatorCommands
{
    /// <summary>Adds <c>adapters</c>, <c>replacements</c> and <c>submit</c> to the root command.</summary>
    public static void AddTo(Command root)
    {
        root.Subcommands.Add(AdaptersCommand.Create());
        root.Subcommands.Add(ReplacementsCommand.Create());
        root.Subcommands.Add(SubmitCommand.Create());
    }
}
