"""The guide's "Model Profiles", and its blocks that only build a router with some option:
each option has the effect the guide gives it."""

from __future__ import annotations

from .conftest import Reader, Step


def test_the_built_in_profiles_are_the_guides(reader: Reader) -> None:
    session = reader.run(Step(
        "guide_15_built_in_profiles.py",
        then="from sollol.hybrid_router import MODEL_PROFILES as built_in\n"
             "print(f'same: {built_in == MODEL_PROFILES}')\n"))
    session.expect("same: True")


DECIDES = ("for model in ('llama3.1:8b', 'mixtral:8x7b', 'llama3.1:70b', 'llama3.2'):\n"
           "    print(f'{model}: {router.should_use_distributed(model)}')\n")


def test_routers_built_with_the_guides_options(reader: Reader) -> None:
    session = reader.run(
        Step("guide_05_option_2_manual_setup.py"),  # the imports these blocks use
        # Threshold Configuration: 30 means 30 billion; profiles decide for models not here
        Step("guide_17_threshold_configuration.py", then=DECIDES),
        Step("guide_18_optimization_tips.py", then="print(router.num_rpc_backends)\n"),
        Step("guide_26_issue_coordinator_startup_timeout.py",
             then="print(f'timeout: {router.coordinator_timeout}')\n"),
        Step("guide_39_multiple_coordinators.py",
             then="try:\n"
                  "    router_70b.route_request(model='llama3.2', messages=[])\n"
                  "except ValueError as exc:\n"
                  "    print(exc)\n"
                  "print(router_405b.should_use_distributed('llama3.1:70b'))\n"),
        Step("guide_40_layer_distribution_strategies.py",
             then="print(f'strategy: {router.layer_strategy}')\n"))
    session.expect(
        "llama3.1:8b: False",  # its profile: 8B, under the threshold, not required
        "mixtral:8x7b: True",  # its profile requires it
        "llama3.1:70b: True",  # its GGUF is here (the Ollama store) and no node has it
        "llama3.2: False",  # an Ollama node has it
        "6",
        "timeout: 1200",
        r"this router serves llama3\.1:70b only \(model_filter\), not 'llama3\.2'",
        "False",
        "strategy: memory_aware")
